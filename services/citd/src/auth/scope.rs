//! The access checks that depend on the request and the state, one function each, that every
//! path goes through: the person a request says acts is the caller ([`acting`]); the people a
//! two-person rule names each proved themselves with a credential of their own ([`prove`]); a
//! crew member acts and reads only on their own run ([`run_access`]); a unit reports only for
//! its vehicles ([`unit_vehicles`]).

use tonic::Status;

use super::{Caller, Kind, Principal, Role};
use crate::app::App;

/// A request field naming the person who acts (`by`, `person_id`, `counted_by`): empty takes
/// the caller's id; another person's id is refused.
pub fn acting(caller: &Caller, field: &str, value: &str) -> Result<String, Status> {
    let me = &caller.principal.id;
    if value.is_empty() || value == me {
        return Ok(me.clone());
    }
    Err(Status::permission_denied(format!(
        "{field} names {value:?} but the caller is {me:?}: a person acts only as themselves"
    )))
}

/// Where a two-person rule needs a person: the request field, the person it names and the
/// role their credential must carry (None: any authenticated person, e.g. outlet staff).
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub field: &'a str,
    pub person: &'a str,
    pub role: Option<Role>,
}

/// What is wrong with the credentials behind a two-person call.
#[derive(Debug)]
pub enum Unproven {
    /// A named person presented no credential (neither the caller nor a co-signer): the call
    /// is denied (PERMISSION_DENIED), naming the field and how to co-sign.
    Missing(String),
    /// A person's credential does not carry the role their place needs: the rule is refused
    /// (FAILED_PRECONDITION, recorded).
    WrongRole(String),
}

fn signer<'c>(caller: &'c Caller, person: &str) -> Option<&'c Principal> {
    std::iter::once(&caller.principal)
        .chain(&caller.cosigners)
        .find(|p| p.kind == Kind::Person && p.id == person)
}

/// Checks that each place is filled by a person who proved themselves (the caller or a
/// co-signer) with a credential carrying the place's role. Empty places are left to the rules
/// (R3, R6 name them). One credential proves one person; that one person cannot fill two
/// places is the rules' (R3, R6), for every role.
pub fn prove(caller: &Caller, places: &[Place<'_>]) -> Result<(), Unproven> {
    for place in places.iter().filter(|p| !p.person.is_empty()) {
        let Some(p) = signer(caller, place.person) else {
            return Err(Unproven::Missing(format!(
                "{} {:?} has not co-signed: each person named must add their own token as {}",
                place.field,
                place.person,
                super::layer::COSIGN
            )));
        };
        if let Some(role) = place.role
            && !p.roles.has(role)
        {
            return Err(Unproven::WrongRole(format!(
                "{} {:?} holds no {} credential (roles: {})",
                place.field,
                place.person,
                role.as_str(),
                p.roles
            )));
        }
    }
    Ok(())
}

/// A caller whose roles are crew only acts and reads only on runs they crew; dispatch and the
/// other roles are not limited to a run.
pub async fn run_access(app: &App, caller: &Caller, run_id: &str) -> Result<(), Status> {
    let p = &caller.principal;
    if !p.roles.crew_only() {
        return Ok(());
    }
    let crew = app
        .with_world(|w| {
            w.runs.get(run_id).map(|r| {
                std::iter::once(&r.driver_id)
                    .chain(&r.escort_ids)
                    .any(|c| *c == p.id)
            })
        })
        .await;
    match crew {
        Some(true) => Ok(()),
        // An unknown run is the handler's NOT_FOUND, not a denial.
        None => Ok(()),
        Some(false) => Err(Status::permission_denied(format!(
            "{:?} is not on the crew of run {run_id:?}",
            p.id
        ))),
    }
}

/// The vehicles a unit or gateway may report for (empty when unbound or disabled).
pub fn unit_vehicles(app: &App, unit: &Principal) -> std::sync::Arc<foldhash::HashSet<String>> {
    app.with_units(|units| match units.get(&unit.id) {
        Some(u) if !u.disabled && u.gateway == (unit.kind == Kind::Gateway) => u.vehicles.clone(),
        _ => Default::default(),
    })
}
