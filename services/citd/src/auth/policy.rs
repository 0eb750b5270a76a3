//! The one access policy: for every RPC of `cit.v1`, the roles that may call it. A call whose
//! method is not in the table is denied (deny by default), and a test reads the compiled
//! descriptor set and fails when any RPC lacks an entry. The checks that depend on state (a
//! crew member only for their own run, a unit only for its vehicles) are in [`super::scope`].

use std::collections::HashMap;

use super::Role::{self, *};
use super::Roles;

/// Readers of the fleet's live picture.
const DISPATCH: &[Role] = &[Dispatcher, Supervisor];
/// Readers of the armory's books.
const ARMORY_READ: &[Role] = &[GunCustodian, AmmoCustodian, Approver, Supervisor, Auditor];
/// Readers of the registries (people, vehicles, runs).
const REGISTRY_READ: &[Role] = &[Dispatcher, Supervisor, Auditor, Admin];
/// Readers of a run's record, event by event (their reads are recorded).
const AUDIT: &[Role] = &[Auditor, Supervisor];
/// A run's crew (scoped to their own run) and dispatch.
const CREW_OR_DISPATCH: &[Role] = &[Driver, Escort, Dispatcher];

/// `(method path, roles allowed)`. Keep it in proto order, one service a block.
pub const TABLE: &[(&str, &[Role])] = &[
    ("/cit.v1.Telemetry/StreamFixes", &[Unit, Gateway]),
    // Registries: people and vehicles are admin's; plans and their lifecycle dispatch's.
    ("/cit.v1.Runs/RegisterVehicle", &[Admin]),
    ("/cit.v1.Runs/RegisterPerson", &[Admin]),
    ("/cit.v1.Runs/PlanRun", &[Dispatcher]),
    ("/cit.v1.Runs/AmendRun", &[Dispatcher]),
    ("/cit.v1.Runs/EscortReady", CREW_OR_DISPATCH),
    ("/cit.v1.Runs/Depart", CREW_OR_DISPATCH),
    ("/cit.v1.Runs/CheckIn", &[Driver, Escort]),
    ("/cit.v1.Runs/ReportIncident", CREW_OR_DISPATCH),
    ("/cit.v1.Runs/HandOverCashBoxes", &[Driver, Escort]),
    ("/cit.v1.Runs/SwapVehicle", DISPATCH),
    ("/cit.v1.Runs/CloseRun", &[Dispatcher]),
    ("/cit.v1.Runs/CancelRun", DISPATCH),
    ("/cit.v1.Runs/ListVehicles", REGISTRY_READ),
    ("/cit.v1.Runs/ListPeople", REGISTRY_READ),
    ("/cit.v1.Runs/GetVehicle", REGISTRY_READ),
    ("/cit.v1.Runs/GetPerson", REGISTRY_READ),
    ("/cit.v1.Runs/ListRuns", &[Dispatcher, Supervisor, Auditor]),
    // The armory: each custodian their own books; issues and returns need the co-signers of
    // R3 (scope::prove).
    ("/cit.v1.Armory/RegisterWeapon", &[GunCustodian]),
    ("/cit.v1.Armory/RegisterAmmoLot", &[AmmoCustodian]),
    ("/cit.v1.Armory/DeliverAmmo", &[AmmoCustodian]),
    ("/cit.v1.Armory/CountAmmoLot", &[AmmoCustodian]),
    // Any of the people a two-person rule names may submit it, at the desk with the others'
    // co-signatures; each place is then proven (scope::prove).
    (
        "/cit.v1.Armory/IssueWeapon",
        &[GunCustodian, AmmoCustodian, Approver],
    ),
    (
        "/cit.v1.Armory/HandOverWeapon",
        &[Driver, Escort, GunCustodian],
    ),
    (
        "/cit.v1.Armory/ReturnWeapon",
        &[GunCustodian, AmmoCustodian],
    ),
    ("/cit.v1.Armory/GetWeapon", ARMORY_READ),
    ("/cit.v1.Armory/ListWeaponsOut", ARMORY_READ),
    ("/cit.v1.Armory/CustodyHistory", ARMORY_READ),
    ("/cit.v1.Armory/ListWeapons", ARMORY_READ),
    ("/cit.v1.Armory/ListAmmoLots", ARMORY_READ),
    ("/cit.v1.PoliceLiaison/RegisterCheckpoint", &[Liaison]),
    (
        "/cit.v1.PoliceLiaison/ListCheckpoints",
        &[Liaison, Dispatcher, Supervisor, Auditor],
    ),
    // Dispatch: the live picture. A crew member may read their own run.
    (
        "/cit.v1.Dispatch/GetRun",
        &[Dispatcher, Supervisor, Auditor, Driver, Escort],
    ),
    ("/cit.v1.Dispatch/ListActiveRuns", DISPATCH),
    ("/cit.v1.Dispatch/NearestVehicles", DISPATCH),
    ("/cit.v1.Dispatch/WatchFleet", DISPATCH),
    (
        "/cit.v1.Dispatch/ListAnomalies",
        &[Dispatcher, Supervisor, Auditor],
    ),
    ("/cit.v1.Dispatch/AcknowledgeAnomaly", DISPATCH),
    ("/cit.v1.Dispatch/ResolveAnomaly", DISPATCH),
    ("/cit.v1.Audit/ReadRun", AUDIT),
    ("/cit.v1.Audit/ReadVehicleFixes", AUDIT),
    ("/cit.v1.Audit/ReplayRun", AUDIT),
    ("/cit.v1.Audit/StateAt", AUDIT),
    ("/cit.v1.Audit/VerifyRun", AUDIT),
    ("/cit.v1.Audit/RedetectRun", AUDIT),
    ("/cit.v1.Audit/ExportRun", AUDIT),
    ("/cit.v1.Audit/RenderRun", AUDIT),
    // Moves scenario time (scenario-clock mode only): the simulation's operator.
    ("/cit.v1.ScenarioClock/AdvanceClock", &[Admin]),
    ("/cit.v1.Identity/BindUnit", &[Admin]),
    ("/cit.v1.Identity/DisableUnit", &[Admin]),
    ("/cit.v1.Identity/SetCrewPins", &[Admin]),
    ("/cit.v1.Identity/WhoAmI", &Role::ALL),
];

/// The table, by path.
#[derive(Debug, Clone)]
pub struct Policy {
    by_path: HashMap<&'static str, Roles>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            by_path: TABLE.iter().map(|(p, r)| (*p, Roles::of(r))).collect(),
        }
    }
}

/// Every RPC path of `cit.v1` (`/cit.v1.Service/Method`), from the compiled descriptor set:
/// the universe the table must cover.
pub fn rpc_paths() -> Vec<String> {
    use prost::Message;
    let Ok(set) = prost_types::FileDescriptorSet::decode(cit_proto::FILE_DESCRIPTOR_SET) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                out.push(format!(
                    "/{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    out
}

impl Policy {
    /// The roles that may call `path`; None when the table has no entry (denied).
    pub fn allowed(&self, path: &str) -> Option<Roles> {
        self.by_path.get(path).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every RPC the API defines has an entry, and every entry names an RPC that exists: a new
    /// RPC without a policy fails here rather than being denied to everyone in production.
    #[test]
    fn every_rpc_of_the_api_has_exactly_one_policy_entry() {
        let rpcs = rpc_paths();
        assert!(rpcs.len() > 50, "{rpcs:?}");
        let policy = Policy::default();
        let missing: Vec<_> = rpcs
            .iter()
            .filter(|p| policy.allowed(p).is_none())
            .collect();
        assert!(missing.is_empty(), "RPCs with no policy entry: {missing:?}");
        let unknown: Vec<_> = TABLE
            .iter()
            .filter(|(p, _)| !rpcs.iter().any(|r| r == p))
            .collect();
        assert!(unknown.is_empty(), "entries for no RPC: {unknown:?}");
        assert_eq!(policy.by_path.len(), TABLE.len(), "a path listed twice");
    }

    #[test]
    fn admin_writes_no_operational_data() {
        let policy = Policy::default();
        let admin_may: Vec<_> = TABLE
            .iter()
            .filter(|(p, _)| policy.allowed(p).is_some_and(|r| r.has(Role::Admin)))
            .map(|(p, _)| *p)
            .collect();
        for p in admin_may {
            let (_, method) = p.rsplit_once('/').expect("path");
            let manages = method.starts_with("Register") && !p.contains("Armory")
                || p.contains("Identity")
                || p.contains("ScenarioClock")
                || method.starts_with("List")
                || method.starts_with("Get");
            assert!(manages, "admin may call {p}");
        }
    }
}
