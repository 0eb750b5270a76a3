//! Progress along the planned route, kept continuous: each fix moves it only to a route position
//! reachable from the previous one (so it never jumps where the route passes close to itself),
//! preferring positions whose direction matches the vehicle's heading (so it follows the route
//! back out of a stop it turns around at). Standing fixes do not move it. When the vehicle is
//! somewhere else on the route for good (a shortcut, the end of a detour), progress is
//! re-acquired: a jump, which is not a fall and restarts the U-turn window.

use std::collections::VecDeque;

use cit_domain::{DetectionParams, Fix, Millis};

use crate::frame::{angle_between, dist};
use crate::route::{Candidate, NearSegments, RouteIndex};

/// Below this speed the heading is noise.
const HEADING_MIN_SPEED_MPS: f64 = 2.0;
/// A candidate within this angle of the vehicle's heading runs its way (first acquisition).
const ALONG_HEADING_DEG: f64 = 45.0;
/// How far ahead of the last progress a fix running against the route may still be placed (GPS
/// error along the road where the vehicle turned round).
const AGAINST_AHEAD_M: f64 = 30.0;
/// A vehicle heading more than this off the route's direction (and less than 90°) is turning: its
/// fix neither confirms nor breaks a run of fixes going back along the route.
const TURNING_DEG: f64 = 60.0;
/// Up to this angle off the vehicle's heading a part of the route runs across it rather than
/// against it (see `update`).
const ACROSS_DEG: f64 = 120.0;
/// Cost, in metres, of a candidate running exactly against the vehicle's heading (less as the angle
/// closes).
const AGAINST_HEADING_PENALTY_M: f64 = 25.0;
/// ... or this many times the fix's reported accuracy, when that is more, while the vehicle cannot
/// have turned round: the noisier the fix, the less its distance to each part of the route tells
/// them apart, while the heading (from Doppler, not from the position) is as good as ever.
const AGAINST_HEADING_ACCURACIES: f64 = 2.5;
/// A vehicle turns round only below about this speed (a 180° turn of 6 m radius, under 3 m/s²
/// sideways): one that has not been slower within the U-turn window cannot be driving back along
/// the route, and a fix placing it there is the receiver's error.
const TURNABLE_SPEED_MPS: f64 = 4.0;
/// Consecutive fixes on the route but out of reach before progress is re-acquired.
const LOST_FIXES_BEFORE_REACQUIRE: u32 = 2;
/// The vehicle has left the tracked part of the route for another when, for this many fixes in a
/// row, the other part is at least `SWITCH_MARGIN_M` nearer and the tracked one at least that far.
/// One multipath fix cannot do it; a vehicle that really drove onto an earlier part of the route
/// (driving back along it) does, and that is a fall.
const SWITCH_FIXES: u32 = 2;
const SWITCH_MARGIN_M: f64 = 20.0;
/// ... or this many times the fix's reported accuracy, when that is more.
const SWITCH_ACCURACIES: f64 = 2.5;
/// First acquisition: positions this much worse than the best still count as near-equal (then
/// the one running the vehicle's way wins); about GPS noise at its worst in a street canyon.
const ACQUIRE_SLACK_M: f64 = 20.0;
/// First acquisition: equally good positions this far apart along the route are different
/// parts of it, and up to this many fixes wait for one that tells them apart.
const AMBIGUOUS_APART_M: f64 = 100.0;
const AMBIGUOUS_FIXES: u32 = 3;
/// The least step back that counts as the vehicle moving back (more than GPS error moves progress
/// from one fix to the next).
const STEPPED_BACK_M: f64 = 20.0;
/// The least fall, in multiples of the fix's reported accuracy, that counts as a U-turn (the
/// rule's `uturn_m` when that is more).
const FALL_ACCURACIES: f64 = 3.0;
/// The U-turn window of SCENARIOS.md.
pub const UTURN_WINDOW_S: f64 = 60.0;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ProgressTracker {
    /// Current progress, metres along the route, once acquired.
    pub s: Option<f64>,
    last_t: Millis,
    /// When the vehicle was last slower than [`TURNABLE_SPEED_MPS`].
    #[serde(default)]
    slow_at: Option<Millis>,
    lost: u32,
    switching: u32,
    /// (time, progress) of the fixes of the last 60 s that no later fix has matched or passed:
    /// progress strictly falls from front to back, so the front is the window's maximum (a
    /// vehicle driving on keeps one entry, not sixty).
    window: VecDeque<(Millis, f64)>,
    /// How many fixes confirm the current fall (see `update`).
    falling: u32,
    /// Fixes in a row placed on the route while running against it.
    backing: u32,
    /// Fixes that could not place the vehicle yet (see first acquisition).
    #[serde(default)]
    ambiguous_fixes: u32,
    /// Where and when the last fix near the route lay (one set aside as a jump aside), and
    /// whether the latest fix was set aside as a jump (see `update`).
    last_placed: Option<([f64; 2], Millis)>,
    jumped: bool,
    #[serde(skip)]
    near: NearSegments,
}

/// What one fix did to progress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgressUpdate {
    /// How far progress is below its maximum of the last 60 s.
    pub fall_m: f64,
    /// Fixes confirming a fall of at least the caller's threshold: this one and those in a row
    /// before it that ran against the route (or 2 for a confirmed switch back).
    pub falling_fixes: u32,
}

/// How far along the route a vehicle at this speed can have come in `dt_s` seconds, with room
/// for GPS error and for its speed changing.
fn reach_m(speed_mps: f64, dt_s: f64) -> f64 {
    (speed_mps.max(3.0) + 5.0) * dt_s.clamp(0.0, 600.0) + 30.0
}

impl ProgressTracker {
    /// Feeds one fix, at `p` in the route's frame, under the run's parameters (`corridor_m`: how
    /// far from the route a fix may be and still count as on it; `uturn_m`: the fall that counts;
    /// `stop_speed_mps`: below it the vehicle stands). `cands` is scratch space (one buffer for
    /// the whole engine, not one per run). Returns the progress update and the fix's distance to
    /// the route (one R-tree query serves both: the nearest candidate, or a nearest-neighbour
    /// search when none is within reach).
    pub fn update(
        &mut self,
        route: &RouteIndex,
        cands: &mut Vec<Candidate>,
        fix: &Fix,
        p: [f64; 2],
        params: &DetectionParams,
    ) -> (ProgressUpdate, f64) {
        // A fall shorter than a few times the fix's reported error is within what two fixes a
        // minute apart can disagree by along the road: below that the error reads as a U-turn.
        let (search_m, fall_threshold_m) = (
            params.corridor_m,
            params.uturn_m.max(FALL_ACCURACIES * fix.accuracy_m),
        );
        let standing = fix.speed_mps < params.stop_speed_mps;
        let (t, speed_mps, heading_deg) = (fix.t, fix.speed_mps, fix.heading_deg);
        // Two parts of the route a fix cannot tell apart are not told apart by it: the margin a
        // switch needs grows with the error the unit reports.
        let switch_margin_m = SWITCH_MARGIN_M.max(SWITCH_ACCURACIES * fix.accuracy_m);
        if speed_mps < TURNABLE_SPEED_MPS {
            self.slow_at = Some(t);
        }
        let could_have_turned = self
            .slow_at
            .is_some_and(|at| t.secs_since(at) <= UTURN_WINDOW_S);
        let against_penalty_m = if could_have_turned {
            AGAINST_HEADING_PENALTY_M
        } else {
            AGAINST_HEADING_PENALTY_M.max(AGAINST_HEADING_ACCURACIES * fix.accuracy_m)
        };
        // Whether this fix placed the vehicle on the route (only such fixes confirm a fall).
        let mut updated = false;
        // Whether the vehicle moved against the route's direction (a U-turn or reversing), or
        // was found clearly back on an earlier part of the route. Only such fixes make a fall:
        // progress that corrects backward after a noisy fix while the vehicle drives on along
        // the route is not a U-turn.
        let mut against = false;
        // Whether the vehicle ran across the route's direction rather than along or against it:
        // in a turn, or turning round at a corner.
        let mut turning = false;
        let mut switched_back = false;
        // Whether this fix took progress back by more than the vehicle's reach (possible only on
        // a part running its way: see below).
        let mut leapt_back = false;
        let (before, dt_s) = (self.s, t.secs_since(self.last_t));
        // The window holds the last 60 s only (its entries fall from the front).
        while self
            .window
            .front()
            .is_some_and(|(wt, _)| t.secs_since(*wt) > UTURN_WINDOW_S)
        {
            self.window.pop_front();
        }
        route.candidates(p, search_m, &mut self.near, cands);
        let distance = cands
            .iter()
            .map(|c| c.lateral)
            .fold(f64::INFINITY, f64::min);
        let distance = if distance.is_finite() {
            distance
        } else {
            route.distance(p)
        };
        if standing {
            cands.clear();
            // Standing fixes break a run of fixes "in a row" towards another part of the route.
            self.switching = 0;
        }
        // A fix farther from the last one near the route than the vehicle could have driven
        // since is a multipath jump (along the road it looks like progress far ahead): it moves
        // nothing. Only one: a second in a row is believed (the first may have been the bad one).
        let jump = !standing
            && !self.jumped
            && self
                .last_placed
                .is_some_and(|(q, at)| dist(p, q) > reach_m(speed_mps, t.secs_since(at)));
        self.jumped = jump;
        if jump {
            cands.clear();
        } else if !cands.is_empty() {
            self.last_placed = Some((p, t));
        }
        let use_heading = speed_mps >= HEADING_MIN_SPEED_MPS;
        // Grows with the angle (nothing running the vehicle's way, half across it, all against
        // it): in a turn the heading lies between two segments' bearings, and a part of the
        // route 70° off it is a worse match than one 10° off, not an equal one. The curve is a
        // smoothstep, within 0.02 of (1 - cos) / 2 and without trigonometry on the hot path.
        let angle_cost = |angle: f64| {
            if use_heading {
                let x = angle / 180.0;
                against_penalty_m * x * x * (3.0 - 2.0 * x)
            } else {
                0.0
            }
        };
        let heading_cost = |c: &Candidate| angle_cost(angle_between(c.bearing, heading_deg));
        if !cands.is_empty() {
            match self.s {
                None => {
                    // First acquisition: best match; among near-equal ones, those running the
                    // way the vehicle is heading (a vehicle just past the turnaround of an
                    // out-and-back road is on the way back, not on the crossing segment), then
                    // the earliest part of the route (a depot is both the start and the end of a
                    // round trip).
                    let min_cost = cands
                        .iter()
                        .map(|c| c.lateral + heading_cost(c))
                        .fold(f64::INFINITY, f64::min);
                    let aside = |c: &Candidate| {
                        use_heading && angle_between(c.bearing, heading_deg) > ALONG_HEADING_DEG
                    };
                    // Near-equal: within GPS noise of the best (a fix 15 m off the road it is on
                    // can lie nearer a segment crossing it, which runs another way).
                    let near_best = || {
                        cands
                            .iter()
                            .filter(|c| c.lateral + heading_cost(c) <= min_cost + ACQUIRE_SLACK_M)
                    };
                    let best = near_best()
                        .min_by(|a, b| aside(a).cmp(&aside(b)).then(a.s.total_cmp(&b.s)));
                    // Where two parts of the route that both run the vehicle's way meet (a round
                    // trip's last leg crossing its first), one fix cannot tell which the vehicle
                    // is on: wait for the next ones (up to a few), which can; meanwhile no
                    // progress means no U-turn is judged, and the other rules do not need it.
                    let ambiguous = best.is_some_and(|b| {
                        near_best()
                            .any(|c| aside(c) == aside(b) && (c.s - b.s).abs() > AMBIGUOUS_APART_M)
                    });
                    if ambiguous && self.ambiguous_fixes < AMBIGUOUS_FIXES {
                        self.ambiguous_fixes += 1;
                    } else if let Some(c) = best {
                        self.ambiguous_fixes = 0;
                        self.jump_to(c.s);
                    }
                }
                Some(prev) => {
                    let reach = reach_m(speed_mps, t.secs_since(self.last_t));
                    // One pass, each candidate's angle and cost measured once: the best
                    // overall, and the best the vehicle can have reached.
                    // Positions a little beyond reach stay possible at a cost, so a vehicle that
                    // stopped short of a turnaround can still follow the route back out; but
                    // only where its heading shows it running that part's way: a fix beyond
                    // reach on a part running against it, or from a vehicle too slow to have a
                    // heading, is GPS error onto a nearby part (a loop, the other side of a
                    // block), not a place the vehicle reached. Nor is a position well ahead on a
                    // part running against the vehicle: running against the route takes progress
                    // back, never forward.
                    // (cost, angle to the heading, candidate); the best also with its score.
                    let mut global: Option<(f64, f64, Candidate)> = None;
                    let mut best: Option<(f64, f64, f64, Candidate)> = None;
                    // Whether a part running the vehicle's way was within reach too, of the
                    // last progress or of the window's maximum (where the vehicle came from).
                    let mut along_in_reach = false;
                    let window_max = self.window.front().map_or(prev, |(_, v)| *v);
                    for c in cands.iter() {
                        let angle = angle_between(c.bearing, heading_deg);
                        let cost = c.lateral + angle_cost(angle);
                        if global.is_none_or(|(g, ..)| cost < g) {
                            global = Some((cost, angle, *c));
                        }
                        let step = (c.s - prev).abs();
                        along_in_reach |= use_heading
                            && angle <= ALONG_HEADING_DEG
                            && (step <= reach || (c.s - window_max).abs() <= reach);
                        let runs_its_way = use_heading && angle <= 90.0;
                        let runs_against = use_heading && !runs_its_way;
                        let possible =
                            step <= reach || (step <= 3.0 * reach + 60.0 && runs_its_way);
                        if possible && !(runs_against && c.s - prev > AGAINST_AHEAD_M) {
                            let score = cost + 0.3 * (step - reach).max(0.0);
                            if best.is_none_or(|(b, ..)| score < b) {
                                best = Some((score, cost, angle, *c));
                            }
                        }
                    }
                    match best {
                        Some((_, here_cost, here_angle, here)) => {
                            self.lost = 0;
                            let elsewhere = global.filter(|(g_cost, _, g)| {
                                here.lateral >= switch_margin_m
                                    && g_cost + switch_margin_m <= here_cost
                                    && (g.s - here.s).abs() > reach
                            });
                            match elsewhere {
                                Some((.., g)) => {
                                    self.switching += 1;
                                    if self.switching >= SWITCH_FIXES {
                                        self.switching = 0;
                                        switched_back = g.s < prev;
                                        self.s = Some(g.s);
                                    } else {
                                        self.s = Some(here.s);
                                    }
                                }
                                None => {
                                    self.switching = 0;
                                    self.s = Some(here.s);
                                    leapt_back = prev - here.s > reach;
                                    // Placed across the route (90–120° off) while a part
                                    // running the vehicle's way was within reach: noise onto
                                    // a crossing part, not the vehicle running back.
                                    let against_deg =
                                        if along_in_reach { ACROSS_DEG } else { 90.0 };
                                    against = use_heading && here_angle > against_deg;
                                    turning = use_heading && here_angle > TURNING_DEG && !against;
                                }
                            }
                            updated = true;
                        }
                        None => {
                            self.lost += 1;
                            if self.lost >= LOST_FIXES_BEFORE_REACQUIRE {
                                match global {
                                    // Found again behind, running back along the route: it
                                    // turned round where progress hung on a part near the
                                    // turn (a bend, a corner) and drove back faster than the
                                    // reach allowed to follow. A fall, not a jump (a vehicle
                                    // rejoining after a detour or shortcut runs the route's
                                    // way).
                                    Some((_, angle, g))
                                        if g.s < prev && use_heading && angle > 90.0 =>
                                    {
                                        self.lost = 0;
                                        self.switching = 0;
                                        self.s = Some(g.s);
                                        switched_back = true;
                                        updated = true;
                                    }
                                    _ => self.jump_to(global.map_or(prev, |(.., c)| c.s)),
                                }
                            }
                        }
                    }
                }
            }
            self.last_t = t;
        } else if standing {
            self.last_t = t;
        }
        let Some(s) = self.s else {
            let none = ProgressUpdate {
                fall_m: 0.0,
                falling_fixes: 0,
            };
            return (none, distance);
        };
        while self.window.back().is_some_and(|(_, v)| *v <= s) {
            self.window.pop_back();
        }
        self.window.push_back((t, s));
        let max = self.window.front().map_or(s, |(_, v)| *v);
        let fall_m = max - s;
        // Whether the fix carries on a run of fixes going back along the route: it runs against
        // the route where it was placed; or, after one that did, it was placed in a turn (a
        // corner of the route, where the part running across matches a heading as well as the
        // part behind) and took progress back by about as far as the vehicle drove; or, after
        // two, it took progress back beyond reach onto a part running its way (the other side
        // of a block loop).
        let stepped_back =
            before.is_some_and(|b| b - s >= (0.5 * speed_mps * dt_s).max(STEPPED_BACK_M));
        let runs_back = against
            || (updated && turning && stepped_back && self.backing >= 1)
            || (leapt_back && self.backing >= 2);
        if runs_back {
            self.backing += 1;
        } else if updated && !turning {
            self.backing = 0;
        }
        if fall_m < fall_threshold_m {
            self.falling = 0;
        } else if switched_back {
            // Already confirmed by the switch itself (two fixes in a row).
            self.falling = self.falling.max(2);
        } else if updated && runs_back {
            // The fixes before it that ran against the route confirm the fall too: a multipath
            // fix can jump, but not turn the vehicle's heading round, and a unit reporting every
            // 5 s may send only one or two fixes between 50 m back and leaving the route.
            self.falling = self.backing.max(self.falling + 1);
        }
        let update = ProgressUpdate {
            fall_m,
            falling_fixes: self.falling,
        };
        (update, distance)
    }

    fn jump_to(&mut self, s: f64) {
        self.s = Some(s);
        self.lost = 0;
        self.switching = 0;
        self.window.clear();
        self.falling = 0;
        self.backing = 0;
    }

    /// Forget the fall history (after a U-turn was raised: the same occurrence).
    pub fn reset_window(&mut self) {
        self.window.clear();
        self.falling = 0;
        self.backing = 0;
    }
}
