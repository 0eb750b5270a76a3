//! Identity and access: who is calling (a unit by its client certificate, a person by a bearer
//! token), what each role may call (one deny-by-default table, [`policy`]), enforced in one
//! tower layer ([`layer`]) before any handler runs, and the checks that depend on state (a
//! crew member only for their own run, a unit only for its vehicles, the people a request
//! names proven by credentials) in [`scope`]. TLS with reloadable certificates is [`tls`]; the
//! development PKI of the demo, the tests and `cit pki` is [`devpki`].

pub mod denials;
pub mod devpki;
pub mod layer;
pub mod pins;
pub mod policy;
pub mod scope;
pub mod tls;
pub mod token;

use std::fmt;

use serde::Serialize;

/// A role a credential grants. Operational roles of people, the two kinds of telematics
/// principals, and admin, who manages people, units, keys and bindings and writes no
/// operational data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Role {
    Unit,
    Gateway,
    Driver,
    Escort,
    GunCustodian,
    AmmoCustodian,
    Approver,
    Dispatcher,
    Supervisor,
    Liaison,
    Auditor,
    Admin,
}

impl Role {
    pub const ALL: [Role; 12] = [
        Role::Unit,
        Role::Gateway,
        Role::Driver,
        Role::Escort,
        Role::GunCustodian,
        Role::AmmoCustodian,
        Role::Approver,
        Role::Dispatcher,
        Role::Supervisor,
        Role::Liaison,
        Role::Auditor,
        Role::Admin,
    ];

    /// The name in tokens, the policy and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Unit => "unit",
            Role::Gateway => "gateway",
            Role::Driver => "driver",
            Role::Escort => "escort",
            Role::GunCustodian => "gun_custodian",
            Role::AmmoCustodian => "ammo_custodian",
            Role::Approver => "approver",
            Role::Dispatcher => "dispatcher",
            Role::Supervisor => "supervisor",
            Role::Liaison => "police_liaison",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Crew roles: what they may see and do is limited to their own run.
    pub fn is_crew(self) -> bool {
        matches!(self, Role::Driver | Role::Escort)
    }
}

/// A set of roles (a bit per role).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Roles(u16);

impl Roles {
    pub const NONE: Roles = Roles(0);

    pub const fn of(roles: &[Role]) -> Roles {
        let mut bits = 0u16;
        let mut i = 0;
        while i < roles.len() {
            bits |= 1 << roles[i] as u8;
            i += 1;
        }
        Roles(bits)
    }

    pub fn has(self, r: Role) -> bool {
        self.0 & (1 << r as u8) != 0
    }

    pub fn intersects(self, other: Roles) -> bool {
        self.0 & other.0 != 0
    }

    pub fn insert(&mut self, r: Role) {
        self.0 |= 1 << r as u8;
    }

    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.has(*r))
    }

    /// Only crew roles (no role that sees beyond one run).
    pub fn crew_only(self) -> bool {
        self.0 != 0 && self.iter().all(Role::is_crew)
    }

    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Role::as_str).collect()
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.names().as_slice() {
            [] => f.write_str("none"),
            names => f.write_str(&names.join(", ")),
        }
    }
}

/// What kind of principal a credential is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Person,
    Unit,
    Gateway,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Person => "person",
            Kind::Unit => "unit",
            Kind::Gateway => "gateway",
        }
    }
}

/// How a principal proved itself. Never the secret itself: a token's key id and token id, a
/// certificate's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum Via {
    Token {
        key_id: String,
        token_id: String,
    },
    Certificate {
        /// SHA-256 of the certificate's DER, hex.
        fingerprint: String,
    },
}

impl Via {
    pub fn name(&self) -> &'static str {
        match self {
            Via::Token { .. } => "token",
            Via::Certificate { .. } => "certificate",
        }
    }

    pub fn credential(&self) -> String {
        match self {
            Via::Token { key_id, token_id } => format!("{key_id}/{token_id}"),
            Via::Certificate { fingerprint } => fingerprint.clone(),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub id: String,
    pub kind: Kind,
    #[serde(skip)]
    pub roles: Roles,
    #[serde(flatten)]
    pub via: Via,
}

/// Who made a call, as handlers see it (the layer puts it in the request's extensions): the
/// caller and the people who co-signed it with credentials of their own (two-person rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    pub cosigners: Vec<Principal>,
}

/// What an event's metadata records of who caused it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Actor<'a> {
    #[serde(flatten)]
    pub principal: &'a Principal,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub cosigners: &'a [Principal],
}

impl Caller {
    pub fn actor(&self) -> Actor<'_> {
        Actor {
            principal: &self.principal,
            cosigners: &self.cosigners,
        }
    }
}

/// The SAN URI prefixes naming a unit and a gateway in their certificates.
pub const UNIT_URI: &str = "urn:cit:unit:";
pub const GATEWAY_URI: &str = "urn:cit:gateway:";
