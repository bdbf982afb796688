//! [`RolloutSim`]: a simulated host that drives a [`Strategy`] through a rollout, natively and
//! deterministically (a simulated clock, no threads, no sleeping).

use std::fmt;

use crate::strategy::{validate_step, InvalidParam, Strategy};
use crate::types::{Action, Instance, Pair, Readiness, RolloutState, Service, Traffic};

/// What becomes of a candidate instance once it has had
/// [`ready_delay_ms`](RolloutSim::ready_delay_ms) to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// It becomes `Ready`.
    Ready,
    /// It becomes `Failed`.
    Fail,
    /// It stays `Starting` forever (never passes its readiness checks).
    Hang,
}

/// How a simulated rollout ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The strategy returned `Promote` or `Done`: the candidate is now the only revision.
    Completed,
    /// The strategy returned `Rollback(reason)`.
    RolledBack {
        /// The reason it gave.
        reason: String,
    },
    /// The rollout cannot progress: nothing is pending and the strategy neither changed
    /// anything nor set a timer, or `max_steps` calls were made.
    Stuck {
        /// What the simulator saw.
        reason: String,
    },
    /// `plan` returned an error or a step the host refuses (see
    /// [`validate_step`](crate::strategy::validate_step)); the host would halt and roll back.
    PlanFailed {
        /// The error.
        error: String,
    },
    /// [`check_params`](crate::strategy::Strategy::check_params) refused the service's
    /// parameters: the host refuses the deploy (HTTP 400), so no rollout starts and `plan`
    /// is never called.
    ParamsRefused {
        /// The parameter and why.
        error: InvalidParam,
    },
}

/// One `plan` call of a simulated rollout, with the state after its actions were applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Milliseconds since the rollout started when `plan` was called.
    pub elapsed_ms: u64,
    /// The actions returned (empty when `plan` failed).
    pub actions: Vec<Action>,
    /// Stable instances afterwards.
    pub stable: u32,
    /// Ready stable instances afterwards.
    pub stable_ready: u32,
    /// Candidate instances afterwards.
    pub candidate: u32,
    /// Ready candidate instances afterwards.
    pub candidate_ready: u32,
    /// The traffic split afterwards; `None` until the strategy sets one (every ready instance
    /// then gets an equal share).
    pub traffic: Option<Traffic>,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "t={}ms {:?} -> stable {}/{} ready, candidate {}/{} ready, traffic {}",
            self.elapsed_ms,
            self.actions,
            self.stable_ready,
            self.stable,
            self.candidate_ready,
            self.candidate,
            match self.traffic {
                Some(t) => format!("{}/{}", t.stable, t.candidate),
                None => "per instance".to_string(),
            }
        )
    }
}

/// The result of [`RolloutSim::run_to_end`].
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// How the rollout ended.
    pub outcome: Outcome,
    /// Every `plan` call, in order.
    pub history: Vec<Record>,
    /// The state the strategy would see next (instances, traffic, revisions, clock).
    pub final_state: RolloutState,
    min_ready: u32,
    max_instances: u32,
}

impl Report {
    /// The fewest ready instances serving traffic at any point of the rollout (see the module
    /// docs for when it is sampled). A rolling strategy asserts it never fell below
    /// `replicas - max_unavailable`.
    pub fn min_ready_during(&self) -> u32 {
        self.min_ready
    }

    /// The most instances (stable + candidate, any readiness) alive at any point. A rolling
    /// strategy asserts it never rose above `replicas + max_surge`.
    pub fn max_instances_during(&self) -> u32 {
        self.max_instances
    }

    /// Every action returned during the rollout, in order.
    pub fn actions(&self) -> impl Iterator<Item = &Action> {
        self.history.iter().flat_map(|r| r.actions.iter())
    }

    /// The history, one line per `plan` call (handy in assertion messages).
    pub fn history_text(&self) -> String {
        self.history
            .iter()
            .map(|r| format!("{r}\n"))
            .collect::<String>()
    }
}

fn ready(instances: &[SimInstance]) -> u32 {
    instances
        .iter()
        .filter(|i| i.readiness == Readiness::Ready)
        .count() as u32
}

#[derive(Clone, Debug)]
struct SimInstance {
    id: String,
    node: String,
    revision: u64,
    readiness: Readiness,
    created_ms: u64,
    /// When a `Starting` instance settles, and into what (`None`: never).
    settles: Option<(u64, Readiness)>,
}

/// Drives a [`Strategy`] through a simulated rollout.
///
/// The model follows the host's rollout driver, in the terms of [`RolloutState`]:
///
/// - The rollout starts with `replicas` ready stable instances at revision R (default 1) and a
///   candidate revision R+1 at simulated time `start_ms`, with no traffic split set. On a
///   [first deploy](RolloutSim::first_deploy) there is no stable revision and no stable
///   instance.
/// - Each [`step`](RolloutSim::step) calls `plan` with the current state (handing back the
///   previous step's `plugin_state`), checks the step as the host does
///   ([`validate_step`](crate::strategy::validate_step); a refused step ends the run as
///   [`Outcome::PlanFailed`]) and applies the actions in order:
///   - `ScaleCandidate(n)` / `ScaleStable(n)` create instances in `Starting` or remove
///     instances (failed first, then starting, then ready; newest first). A new instance
///     settles after [`ready_delay_ms`](RolloutSim::ready_delay_ms): candidates as their
///     [`Fate`] says, stable instances always `Ready`.
///   - `SetTraffic` sets the split. Until a strategy sets one, every ready instance of either
///     revision gets an equal share, and `RolloutState::traffic` reports that as the weights
///     `{ stable: ready stable instances, candidate: ready candidates }`.
///   - `WaitUntil(t)` sets the step's timer. Each step's answer replaces the previous timer:
///     a step without `WaitUntil` leaves none.
///   - `Promote` or `Done` ends the run with [`Outcome::Completed`]: the candidate instances
///     become the stable set (what is left of the old revision stops) and the candidate
///     revision the stable one.
///   - `Rollback(reason)` ends the run with [`Outcome::RolledBack`]: the candidates go away and
///     the stable revision is scaled back to `replicas` (new instances start as usual).
///   - Actions after one that ends the run are ignored, as the host ignores them.
/// - Then time moves, the way the host calls a strategy when observed state changes: if the
///   step changed anything (instances or traffic) the next call happens at the same instant;
///   otherwise the clock jumps to the next event — an instance settling, the timer, a
///   requested promote or rollback. With no event pending the run ends as
///   [`Outcome::Stuck`] (the real host would never call again), as it does after
///   [`max_steps`](RolloutSim::max_steps) calls.
/// - After every action and every clock jump the simulator samples how many ready instances
///   are *serving*: ready instances of a revision whose traffic weight is non-zero (all ready
///   instances while no split is set). Its minimum is
///   [`min_ready_during`](Report::min_ready_during); the maximum number of instances alive is
///   [`max_instances_during`](Report::max_instances_during).
///
/// # Example
///
/// ```
/// use orca_plugin_sdk::strategy::Strategy;
/// use orca_plugin_sdk::testing::{Outcome, RolloutSim};
/// use orca_plugin_sdk::types::{Action, RolloutState, Step, Traffic};
///
/// /// Starts every candidate, switches once all are ready.
/// #[derive(Default)]
/// struct Switch;
///
/// impl Strategy for Switch {
///     fn plan(&self, s: &RolloutState) -> Result<Step, String> {
///         if s.candidate.len() < s.replicas() as usize {
///             return Ok(Step::of([Action::ScaleCandidate(s.replicas())]));
///         }
///         if s.candidate_ready() < s.replicas() {
///             return Ok(Step::new()); // called again when an instance settles
///         }
///         Ok(Step::of([
///             Action::SetTraffic(Traffic::ALL_CANDIDATE),
///             Action::ScaleStable(0),
///             Action::Promote,
///             Action::Done,
///         ]))
///     }
/// }
///
/// let report = RolloutSim::new(Switch).replicas(3).run_to_end();
/// assert_eq!(report.outcome, Outcome::Completed, "{}", report.history_text());
/// assert_eq!(report.min_ready_during(), 3);
/// assert_eq!(report.max_instances_during(), 6);
/// assert_eq!(report.final_state.stable_revision, Some(2));
/// ```
pub struct RolloutSim<S> {
    strategy: S,
    // Options.
    service: Service,
    stable_revision: Option<u64>,
    ready_delay_ms: u64,
    fate: Box<dyn Fn(u32) -> Fate>,
    promote_at: Option<u64>,
    rollback_at: Option<u64>,
    max_steps: usize,
    nodes: u32,
    start_ms: u64,
    candidate_rps: u64,
    candidate_error_rate: f64,
    // State.
    started: bool,
    now_ms: u64,
    candidate_revision: u64,
    stable: Vec<SimInstance>,
    candidate: Vec<SimInstance>,
    traffic: Option<Traffic>,
    plugin_state: Vec<u8>,
    timer: Option<u64>,
    created: u32,
    candidates_created: u32,
    steps: usize,
    history: Vec<Record>,
    outcome: Option<Outcome>,
    min_ready: u32,
    max_instances: u32,
}

impl<S: Strategy> RolloutSim<S> {
    /// A simulation of `strategy` with the defaults: 3 replicas of revision 1 rolling out
    /// revision 2, candidates ready 5 s after they are created, at most 1000 `plan` calls.
    /// Set options before the first [`step`](Self::step).
    pub fn new(strategy: S) -> Self {
        RolloutSim {
            strategy,
            service: Service {
                project: "default".into(),
                name: "web".into(),
                image: "web:2".into(),
                replicas: 3,
                port: Some(8080),
                domain: None,
                params: Vec::new(),
            },
            stable_revision: Some(1),
            ready_delay_ms: 5_000,
            fate: Box::new(|_| Fate::Ready),
            promote_at: None,
            rollback_at: None,
            max_steps: 1000,
            nodes: 3,
            start_ms: 1_700_000_000_000,
            candidate_rps: 0,
            candidate_error_rate: 0.0,
            started: false,
            now_ms: 0,
            candidate_revision: 0,
            stable: Vec::new(),
            candidate: Vec::new(),
            traffic: None,
            plugin_state: Vec::new(),
            timer: None,
            created: 0,
            candidates_created: 0,
            steps: 0,
            history: Vec::new(),
            outcome: None,
            min_ready: u32::MAX,
            max_instances: 0,
        }
    }

    /// The service's desired instance count (default 3).
    pub fn replicas(mut self, replicas: u32) -> Self {
        self.service.replicas = replicas;
        self
    }

    /// Replaces the whole [`Service`] the strategy sees (including `replicas` and `params`).
    pub fn service(mut self, service: Service) -> Self {
        self.service = service;
        self
    }

    /// Adds a strategy parameter; `json` is JSON text, e.g. `param("steps", "[10, 50]")` or
    /// `param("mode", "\"fast\"")`.
    pub fn param(mut self, key: &str, json: &str) -> Self {
        self.service.params.push(Pair::new(key, json));
        self
    }

    /// The revision serving before the rollout (default 1); the candidate is the next one.
    pub fn stable_revision(mut self, revision: u64) -> Self {
        self.stable_revision = Some(revision);
        self
    }

    /// A first deploy: no stable revision, no stable instance, candidate revision 1.
    pub fn first_deploy(mut self) -> Self {
        self.stable_revision = None;
        self
    }

    /// How long a new instance takes to settle (become ready, or fail) (default 5000 ms).
    pub fn ready_delay_ms(mut self, ms: u64) -> Self {
        self.ready_delay_ms = ms;
        self
    }

    /// When `true`, every candidate becomes `Failed` once it has had the ready delay.
    pub fn fail_candidates(self, fail: bool) -> Self {
        self.candidate_fate(move |_| if fail { Fate::Fail } else { Fate::Ready })
    }

    /// Live traffic the candidates answer while any is ready: `requests_per_sec`, of which
    /// the fraction `error_rate` are 5xx (reported as `candidate_requests`/`candidate_errors`).
    pub fn candidate_traffic(mut self, requests_per_sec: u64, error_rate: f64) -> Self {
        self.candidate_rps = requests_per_sec;
        self.candidate_error_rate = error_rate;
        self
    }

    /// When `true`, no candidate ever becomes ready: they stay `Starting`.
    pub fn hang_candidates(self, hang: bool) -> Self {
        self.candidate_fate(move |_| if hang { Fate::Hang } else { Fate::Ready })
    }

    /// Decides each candidate's [`Fate`] from its ordinal (0 for the first candidate created
    /// in the rollout, 1 for the next...). `.candidate_fate(|n| if n == 1 { Fate::Fail } else
    /// { Fate::Ready })` fails the second candidate only.
    pub fn candidate_fate(mut self, fate: impl Fn(u32) -> Fate + 'static) -> Self {
        self.fate = Box::new(fate);
        self
    }

    /// An operator asks to promote `ms` after the rollout started.
    pub fn request_promote_at(mut self, ms: u64) -> Self {
        self.promote_at = Some(ms);
        self
    }

    /// An operator asks to roll back `ms` after the rollout started.
    pub fn request_rollback_at(mut self, ms: u64) -> Self {
        self.rollback_at = Some(ms);
        self
    }

    /// The most `plan` calls before the run is declared [`Outcome::Stuck`] (default 1000).
    pub fn max_steps(mut self, steps: usize) -> Self {
        self.max_steps = steps;
        self
    }

    /// How many nodes instances are spread over, round-robin (default 3; ids `node-1`...).
    pub fn nodes(mut self, nodes: u32) -> Self {
        self.nodes = nodes.max(1);
        self
    }

    /// The simulated clock at the start of the rollout (default 1 700 000 000 000 ms).
    pub fn start_ms(mut self, ms: u64) -> Self {
        self.start_ms = ms;
        self
    }

    /// Runs `plan` once, applies its actions and moves the clock; returns the outcome once the
    /// rollout has ended (and keeps returning it).
    pub fn step(&mut self) -> Option<Outcome> {
        if let Some(outcome) = &self.outcome {
            return Some(outcome.clone());
        }
        if !self.started {
            self.start();
            // The host checks the parameters at deploy, before the rollout exists.
            if let Err(error) = self.strategy.check_params(&self.state().service) {
                return self.end(Outcome::ParamsRefused { error });
            }
        }
        if self.steps >= self.max_steps {
            return self.end(Outcome::Stuck {
                reason: format!("no end after max_steps = {} plan calls", self.max_steps),
            });
        }
        self.steps += 1;
        let state = self.state();
        let elapsed_ms = state.elapsed_ms;
        let step = match self
            .strategy
            .plan(&state)
            .and_then(|step| validate_step(&step).map(|()| step))
        {
            Ok(step) => step,
            Err(error) => {
                self.record(elapsed_ms, Vec::new());
                return self.end(Outcome::PlanFailed { error });
            }
        };
        self.plugin_state = step.plugin_state;
        self.timer = None;
        let mut changed = false;
        let mut ended = None;
        for action in &step.actions {
            match action {
                Action::ScaleCandidate(n) => changed |= self.scale(true, *n),
                Action::ScaleStable(n) => changed |= self.scale(false, *n),
                Action::SetTraffic(t) => {
                    changed |= self.traffic != Some(*t);
                    self.traffic = Some(*t);
                }
                Action::WaitUntil(t) => self.timer = Some(*t),
                Action::Promote | Action::Done => {
                    self.promote();
                    ended = Some(Outcome::Completed);
                }
                Action::Rollback(reason) => {
                    self.candidate.clear();
                    self.traffic = None;
                    if self.stable_revision.is_some() {
                        self.scale(false, self.service.replicas);
                    }
                    ended = Some(Outcome::RolledBack {
                        reason: reason.clone(),
                    });
                }
            }
            self.sample();
            if ended.is_some() {
                break;
            }
        }
        self.record(elapsed_ms, step.actions);
        if let Some(outcome) = ended {
            return self.end(outcome);
        }
        if !changed {
            match self.next_event() {
                Some(t) => {
                    self.now_ms = self.now_ms.max(t);
                    self.settle();
                    self.sample();
                }
                None => {
                    return self.end(Outcome::Stuck {
                        reason: format!(
                            "at t={}ms the strategy changed nothing and set no wait-until, \
                             and nothing is pending",
                            elapsed_ms
                        ),
                    })
                }
            }
        }
        None
    }

    /// Steps until the rollout ends; returns the outcome, the history and the final state.
    pub fn run_to_end(&mut self) -> Report {
        let outcome = loop {
            if let Some(outcome) = self.step() {
                break outcome;
            }
        };
        Report {
            outcome,
            history: self.history.clone(),
            final_state: self.state(),
            min_ready: self.min_ready_during(),
            max_instances: self.max_instances,
        }
    }

    /// The state `plan` would be called with now.
    pub fn state(&self) -> RolloutState {
        let instances = |v: &[SimInstance]| {
            v.iter()
                .map(|i| Instance {
                    id: i.id.clone(),
                    node: i.node.clone(),
                    revision: i.revision,
                    readiness: i.readiness,
                    age_ms: self.now_ms.saturating_sub(i.created_ms),
                })
                .collect()
        };
        let elapsed_ms = self.now_ms.saturating_sub(self.start_ms);
        // Candidates serve `candidate_rps` while any is ready (a coarse model of live traffic).
        let candidate_requests = if ready(&self.candidate) > 0 {
            self.candidate_rps * elapsed_ms / 1000
        } else {
            0
        };
        let candidate_errors = (candidate_requests as f64 * self.candidate_error_rate) as u64;
        RolloutState {
            service: self.service.clone(),
            stable_revision: self.stable_revision,
            candidate_revision: self.candidate_revision,
            stable: instances(&self.stable),
            candidate: instances(&self.candidate),
            traffic: self.traffic.unwrap_or(Traffic {
                stable: ready(&self.stable),
                candidate: ready(&self.candidate),
            }),
            candidate_requests,
            candidate_errors,
            elapsed_ms,
            now_ms: self.now_ms,
            promote_requested: self.promote_at.is_some_and(|t| elapsed_ms >= t),
            rollback_requested: self.rollback_at.is_some_and(|t| elapsed_ms >= t),
            plugin_state: self.plugin_state.clone(),
        }
    }

    /// Every `plan` call so far.
    pub fn history(&self) -> &[Record] {
        &self.history
    }

    /// The fewest ready instances serving so far (see [`Report::min_ready_during`]).
    pub fn min_ready_during(&self) -> u32 {
        if self.min_ready == u32::MAX {
            0
        } else {
            self.min_ready
        }
    }

    fn start(&mut self) {
        self.started = true;
        self.now_ms = self.start_ms;
        self.candidate_revision = self.stable_revision.map_or(1, |r| r + 1);
        if self.stable_revision.is_some() {
            for _ in 0..self.service.replicas {
                let mut i = self.new_instance(false);
                // Instances of the serving revision have been up for an hour.
                i.created_ms = self.start_ms.saturating_sub(3_600_000);
                i.readiness = Readiness::Ready;
                i.settles = None;
                self.stable.push(i);
            }
        }
        self.sample();
    }

    fn new_instance(&mut self, candidate: bool) -> SimInstance {
        self.created += 1;
        let (prefix, revision, fate) = if candidate {
            let fate = (self.fate)(self.candidates_created);
            self.candidates_created += 1;
            ("candidate", self.candidate_revision, fate)
        } else {
            (
                "stable",
                self.stable_revision.unwrap_or(self.candidate_revision),
                Fate::Ready,
            )
        };
        let settles_at = self.now_ms + self.ready_delay_ms;
        SimInstance {
            id: format!("{prefix}-{}", self.created),
            node: format!("node-{}", (self.created - 1) % self.nodes + 1),
            revision,
            readiness: Readiness::Starting,
            created_ms: self.now_ms,
            settles: match fate {
                Fate::Ready => Some((settles_at, Readiness::Ready)),
                Fate::Fail => Some((settles_at, Readiness::Failed)),
                Fate::Hang => None,
            },
        }
    }

    /// Scales one side to `n`; returns whether anything changed.
    fn scale(&mut self, candidate: bool, n: u32) -> bool {
        let n = n as usize;
        let len = self.side(candidate).len();
        if n > len {
            for _ in len..n {
                let i = self.new_instance(candidate);
                self.side(candidate).push(i);
            }
        } else if n < len {
            let side = self.side(candidate);
            // Remove failed, then starting, then ready instances; newest first.
            let rank = |r: Readiness| match r {
                Readiness::Failed => 0,
                Readiness::Starting => 1,
                Readiness::Ready => 2,
            };
            let mut order: Vec<usize> = (0..side.len()).collect();
            order.sort_by_key(|&i| (rank(side[i].readiness), std::cmp::Reverse(i)));
            let mut remove: Vec<usize> = order[..len - n].to_vec();
            remove.sort_unstable_by(|a, b| b.cmp(a));
            for i in remove {
                side.remove(i);
            }
        }
        n != len
    }

    fn side(&mut self, candidate: bool) -> &mut Vec<SimInstance> {
        if candidate {
            &mut self.candidate
        } else {
            &mut self.stable
        }
    }

    fn promote(&mut self) {
        self.stable = std::mem::take(&mut self.candidate);
        self.stable_revision = Some(self.candidate_revision);
        self.traffic = None;
    }

    fn next_event(&self) -> Option<u64> {
        let start = self.start_ms;
        let settling = self
            .stable
            .iter()
            .chain(&self.candidate)
            .filter(|i| i.readiness == Readiness::Starting)
            .filter_map(|i| i.settles.map(|(t, _)| t));
        let requests = [self.promote_at, self.rollback_at]
            .into_iter()
            .flatten()
            .map(|t| start + t)
            .filter(|&t| t > self.now_ms);
        settling.chain(requests).chain(self.timer).min()
    }

    fn settle(&mut self) {
        let now = self.now_ms;
        for i in self.stable.iter_mut().chain(self.candidate.iter_mut()) {
            if let (Readiness::Starting, Some((t, to))) = (i.readiness, i.settles) {
                if t <= now {
                    i.readiness = to;
                }
            }
        }
    }

    fn sample(&mut self) {
        let (to_stable, to_candidate) = match self.traffic {
            Some(t) => (t.stable > 0, t.candidate > 0),
            None => (true, true),
        };
        let mut serving = 0;
        if to_stable {
            serving += ready(&self.stable);
        }
        if to_candidate {
            serving += ready(&self.candidate);
        }
        self.min_ready = self.min_ready.min(serving);
        let alive = (self.stable.len() + self.candidate.len()) as u32;
        self.max_instances = self.max_instances.max(alive);
    }

    fn record(&mut self, elapsed_ms: u64, actions: Vec<Action>) {
        self.history.push(Record {
            elapsed_ms,
            actions,
            stable: self.stable.len() as u32,
            stable_ready: ready(&self.stable),
            candidate: self.candidate.len() as u32,
            candidate_ready: ready(&self.candidate),
            traffic: self.traffic,
        });
    }

    fn end(&mut self, outcome: Outcome) -> Option<Outcome> {
        self.outcome = Some(outcome.clone());
        Some(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Step;

    /// Replaces instances one at a time: start one candidate, wait for it, shift traffic
    /// proportionally, remove one stable. Rolls back if a candidate fails.
    #[derive(Default)]
    struct OneByOne;

    impl Strategy for OneByOne {
        fn plan(&self, s: &RolloutState) -> Result<Step, String> {
            let n = s.replicas();
            if s.rollback_requested || s.candidate_failed() > 0 {
                return Ok(Step::of([
                    Action::ScaleStable(n),
                    Action::Rollback("candidate failed".into()),
                ]));
            }
            let ready = s.candidate_ready();
            if ready == n {
                return Ok(Step::of([
                    Action::SetTraffic(Traffic::ALL_CANDIDATE),
                    Action::ScaleStable(0),
                    Action::Promote,
                    Action::Done,
                ]));
            }
            if (s.candidate.len() as u32) == ready {
                // Every candidate is ready: shift traffic, retire one stable, start another.
                let weights = Traffic {
                    stable: n - ready,
                    candidate: ready,
                };
                return Ok(Step::of([
                    Action::SetTraffic(weights),
                    Action::ScaleStable(n - ready),
                    Action::ScaleCandidate(ready + 1),
                ]));
            }
            Ok(Step::new())
        }
    }

    #[test]
    fn one_by_one_keeps_capacity() {
        let report = RolloutSim::new(OneByOne).replicas(4).run_to_end();
        assert_eq!(
            report.outcome,
            Outcome::Completed,
            "{}",
            report.history_text()
        );
        assert_eq!(report.final_state.stable_revision, Some(2));
        assert_eq!(report.final_state.stable.len(), 4);
        assert!(report
            .final_state
            .stable
            .iter()
            .all(|i| i.revision == 2 && i.is_ready()));
        assert!(report.final_state.candidate.is_empty());
        // One candidate starts while all stable still serve: never below 4 - 0... except the
        // first ScaleStable, which retires nothing (n - 0 = n).
        assert_eq!(report.min_ready_during(), 4, "{}", report.history_text());
        assert_eq!(report.max_instances_during(), 5);
        // Four candidates, each needing the ready delay.
        assert_eq!(report.final_state.elapsed_ms, 4 * 5_000);
    }

    #[test]
    fn failing_candidates_roll_back() {
        let report = RolloutSim::new(OneByOne)
            .replicas(4)
            .fail_candidates(true)
            .run_to_end();
        assert_eq!(
            report.outcome,
            Outcome::RolledBack {
                reason: "candidate failed".into()
            }
        );
        assert!(report.final_state.candidate.is_empty());
        // No split set any more: the stable instances share the traffic.
        assert_eq!(
            report.final_state.traffic,
            Traffic {
                stable: 4,
                candidate: 0
            }
        );
        assert_eq!(report.final_state.stable_revision, Some(1));
        assert_eq!(report.final_state.stable.len(), 4);
    }

    #[test]
    fn second_candidate_failing_is_seen() {
        let report = RolloutSim::new(OneByOne)
            .candidate_fate(|n| if n == 1 { Fate::Fail } else { Fate::Ready })
            .run_to_end();
        assert!(matches!(report.outcome, Outcome::RolledBack { .. }));
        assert_eq!(report.final_state.elapsed_ms, 10_000);
    }

    #[test]
    fn hanging_candidates_leave_a_waiting_strategy_stuck() {
        let report = RolloutSim::new(OneByOne).hang_candidates(true).run_to_end();
        assert!(
            matches!(&report.outcome, Outcome::Stuck { reason } if reason.contains("nothing is pending")),
            "{:?}",
            report.outcome
        );
    }

    #[test]
    fn rollback_request_arrives_on_time() {
        let report = RolloutSim::new(OneByOne)
            .hang_candidates(true)
            .request_rollback_at(7_000)
            .run_to_end();
        assert!(matches!(report.outcome, Outcome::RolledBack { .. }));
        assert_eq!(report.final_state.elapsed_ms, 7_000);
    }

    /// Waits for a timer, keeps a counter in plugin state, and ends after three wake-ups.
    #[derive(Default)]
    struct Ticker;

    impl Strategy for Ticker {
        fn plan(&self, s: &RolloutState) -> Result<Step, String> {
            let n = s.plugin_state.first().copied().unwrap_or(0);
            if s.promote_requested {
                return Ok(Step::of([Action::Promote, Action::Done]));
            }
            if n == 3 {
                return Ok(Step::of([Action::Done]));
            }
            Ok(Step::of([Action::WaitUntil(s.now_ms + 1_000)]).with_state(vec![n + 1]))
        }
    }

    #[test]
    fn timers_advance_the_clock_and_state_comes_back() {
        let mut sim = RolloutSim::new(Ticker);
        let report = sim.run_to_end();
        assert_eq!(report.outcome, Outcome::Completed);
        let times: Vec<u64> = report.history.iter().map(|r| r.elapsed_ms).collect();
        assert_eq!(times, vec![0, 1_000, 2_000, 3_000]);
        // The `Done` step returned no state.
        assert!(report.final_state.plugin_state.is_empty());
        assert_eq!(report.history.len(), 4);
        // `Done` makes the candidate the only revision, as `Promote` does.
        assert_eq!(report.final_state.stable_revision, Some(2));
        // Stepping after the end keeps returning the outcome.
        assert_eq!(sim.step(), Some(Outcome::Completed));
    }

    #[test]
    fn promote_request_is_an_event() {
        let report = RolloutSim::new(Ticker)
            .request_promote_at(1_500)
            .run_to_end();
        assert_eq!(report.outcome, Outcome::Completed);
        assert_eq!(report.final_state.elapsed_ms, 1_500);
        assert_eq!(
            report.history.last().unwrap().actions,
            vec![Action::Promote, Action::Done]
        );
    }

    #[test]
    fn plan_errors_and_step_limits() {
        struct Fails;
        impl Strategy for Fails {
            fn plan(&self, _: &RolloutState) -> Result<Step, String> {
                Err("boom".into())
            }
        }
        let report = RolloutSim::new(Fails).run_to_end();
        assert_eq!(
            report.outcome,
            Outcome::PlanFailed {
                error: "boom".into()
            }
        );
        assert_eq!(report.history.len(), 1);

        struct Flaps;
        impl Strategy for Flaps {
            fn plan(&self, s: &RolloutState) -> Result<Step, String> {
                Ok(Step::of([Action::SetTraffic(Traffic {
                    stable: s.traffic.candidate,
                    candidate: s.traffic.stable,
                })]))
            }
        }
        let report = RolloutSim::new(Flaps).max_steps(10).run_to_end();
        assert!(matches!(report.outcome, Outcome::Stuck { .. }));
        assert_eq!(report.history.len(), 10);
        // Traffic flipped to a revision with no instance: nothing served.
        assert_eq!(report.min_ready_during(), 0);
    }

    #[test]
    fn first_deploy_has_no_stable() {
        let mut sim = RolloutSim::new(Ticker).first_deploy().replicas(2);
        sim.step();
        let s = sim.state();
        assert_eq!(s.stable_revision, None);
        assert_eq!(s.candidate_revision, 1);
        assert!(s.stable.is_empty());
    }

    #[test]
    fn scale_down_removes_failed_then_starting_first() {
        let mut sim = RolloutSim::new(Ticker)
            .candidate_fate(|n| match n {
                0 => Fate::Ready,
                1 => Fate::Fail,
                _ => Fate::Hang,
            })
            .stable_revision(7);
        sim.start();
        sim.scale(true, 3);
        sim.now_ms += 10_000;
        sim.settle();
        let readiness: Vec<_> = sim.candidate.iter().map(|i| i.readiness).collect();
        assert_eq!(
            readiness,
            vec![Readiness::Ready, Readiness::Failed, Readiness::Starting]
        );
        assert!(sim.candidate.iter().all(|i| i.revision == 8));
        sim.scale(true, 2);
        assert_eq!(sim.candidate[1].readiness, Readiness::Starting);
        sim.scale(true, 1);
        assert_eq!(sim.candidate[0].readiness, Readiness::Ready);
    }

    #[test]
    fn steps_the_host_refuses_fail_the_plan() {
        struct Zero;
        impl Strategy for Zero {
            fn plan(&self, _: &RolloutState) -> Result<Step, String> {
                Ok(Step::of([Action::SetTraffic(Traffic::default())]))
            }
        }
        let report = RolloutSim::new(Zero).run_to_end();
        assert_eq!(
            report.outcome,
            Outcome::PlanFailed {
                error: "set-traffic with both weights zero".into()
            }
        );
    }

    #[test]
    fn rollback_restores_stable_and_unset_traffic_serves_everyone() {
        /// Starts candidates without setting traffic, halves stable, then rolls back.
        #[derive(Default)]
        struct HalfThenBack;
        impl Strategy for HalfThenBack {
            fn plan(&self, s: &RolloutState) -> Result<Step, String> {
                if s.candidate.is_empty() {
                    return Ok(Step::of([Action::ScaleCandidate(2)]));
                }
                if s.candidate_ready() < 2 {
                    return Ok(Step::new());
                }
                // Unset traffic: the ready candidates already serve, beside every stable one.
                let stable = s.stable.len() as u32;
                assert_eq!(
                    s.traffic,
                    Traffic {
                        stable,
                        candidate: 2
                    }
                );
                if s.stable.len() == 4 {
                    return Ok(Step::of([Action::ScaleStable(2)]));
                }
                Ok(Step::of([Action::Rollback("changed my mind".into())]))
            }
        }
        let report = RolloutSim::new(HalfThenBack).replicas(4).run_to_end();
        assert!(matches!(report.outcome, Outcome::RolledBack { .. }));
        assert_eq!(report.min_ready_during(), 2, "{}", report.history_text());
        assert_eq!(report.max_instances_during(), 6);
        let stable = &report.final_state.stable;
        assert_eq!(stable.len(), 4);
        assert_eq!(stable.iter().filter(|i| i.is_ready()).count(), 2);
        assert!(report.final_state.candidate.is_empty());
    }
}
