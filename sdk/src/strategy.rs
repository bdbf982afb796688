//! Deployment strategies (the `strategy` world): a step function the host calls whenever a
//! rollout's observed state changes.

use std::fmt;
use std::marker::PhantomData;

use crate::params::ParamError;
use crate::types::{Action, RolloutState, Service, Step};

/// A deployment strategy.
///
/// The host calls [`plan`](Strategy::plan) whenever the rollout's observed state changes (an
/// instance became ready or failed, a `wait-until` timer fired, an operator asked to promote or
/// roll back) and executes the returned actions in order. Plugins are stateless across calls:
/// the export glue builds the type with `Default::default()` for every call, so anything the
/// strategy must remember between calls goes into [`Step::plugin_state`], which comes back as
/// [`RolloutState::plugin_state`] (empty on the first call). The rollout state is persisted by
/// the host, so a restarted host resumes the rollout.
///
/// `Promote` and `Done` both end the rollout with the candidate as the only revision (the host
/// ignores any action after them); `Rollback` ends it with the stable revision restored to
/// `replicas`. Until a strategy sets a traffic split, every ready instance of either revision
/// gets an equal share. Returning `Err`, or a step [`validate_step`] refuses, fails the
/// rollout: the host halts it and rolls back, showing the message.
///
/// Register the implementation with [`export_strategy!`](crate::export_strategy) and test it
/// natively with [`RolloutSim`](crate::testing::RolloutSim).
pub trait Strategy {
    /// The next step of the rollout described by `state`.
    fn plan(&self, state: &RolloutState) -> Result<Step, String>;

    /// Checks the service's parameters when it is deployed (`orca:plugin@0.3.0`'s
    /// `check-params`), before anything is stored: an error refuses the deploy with HTTP 400
    /// naming the key and the plugin, so a typo fails `orca deploy` instead of the rollout.
    /// `service` is what [`plan`](Strategy::plan) will see as [`RolloutState::service`]
    /// (`[service.deploy.params]` plus the deploy settings, as JSON text). Pure: no state, no
    /// clock. The default accepts everything; a strategy that reads parameters should check
    /// them here with the same code `plan` uses ([`ParamError`] converts with `?`).
    fn check_params(&self, service: &Service) -> Result<(), InvalidParam> {
        let _ = service;
        Ok(())
    }
}

/// A parameter a strategy refuses at deploy: its key and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidParam {
    /// The parameter's key, as the service file writes it.
    pub key: String,
    /// Why, e.g. `expected a percentage from 1 to 100, got 150`.
    pub message: String,
}

impl InvalidParam {
    /// The parameter `key` is refused because of `message`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> InvalidParam {
        InvalidParam {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for InvalidParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "parameter {:?}: {}", self.key, self.message)
    }
}

impl std::error::Error for InvalidParam {}

impl From<ParamError> for InvalidParam {
    fn from(e: ParamError) -> InvalidParam {
        InvalidParam {
            message: format!("expected {}, got {}", e.expected, e.value),
            key: e.key,
        }
    }
}

impl From<InvalidParam> for String {
    fn from(e: InvalidParam) -> String {
        e.to_string()
    }
}

/// The most instances a `ScaleCandidate` / `ScaleStable` action may ask for.
pub const MAX_SCALE: u32 = 1000;
/// The most actions one step may hold.
pub const MAX_ACTIONS: usize = 64;
/// The longest rollback reason, in bytes.
pub const MAX_REASON: usize = 1024;
/// The largest `plugin_state`, in bytes (the host's default limit).
pub const MAX_PLUGIN_STATE: usize = 1 << 20;

/// Checks a step the way the host does before acting on it; the host fails the rollout (halt
/// and roll back) on a step this refuses. [`RolloutSim`](crate::testing::RolloutSim) applies
/// it to every step, so strategy tests catch these mistakes natively.
///
/// Refused: more than [`MAX_ACTIONS`] actions, a scale above [`MAX_SCALE`], `SetTraffic` with
/// both weights zero, a rollback reason longer than [`MAX_REASON`], a `plugin_state` larger
/// than [`MAX_PLUGIN_STATE`].
pub fn validate_step(step: &Step) -> Result<(), String> {
    if step.plugin_state.len() > MAX_PLUGIN_STATE {
        return Err(format!(
            "plugin-state of {} bytes exceeds the limit of {MAX_PLUGIN_STATE}",
            step.plugin_state.len()
        ));
    }
    if step.actions.len() > MAX_ACTIONS {
        return Err(format!(
            "{} actions exceed the limit of {MAX_ACTIONS}",
            step.actions.len()
        ));
    }
    for action in &step.actions {
        match action {
            Action::ScaleCandidate(n) | Action::ScaleStable(n) if *n > MAX_SCALE => {
                return Err(format!(
                    "{action:?} exceeds the limit of {MAX_SCALE} instances"
                ));
            }
            Action::SetTraffic(t) if t.stable == 0 && t.candidate == 0 => {
                return Err("set-traffic with both weights zero".into());
            }
            Action::Rollback(reason) if reason.len() > MAX_REASON => {
                return Err(format!("rollback reason longer than {MAX_REASON} bytes"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The generated `Guest` implementation behind [`export_strategy!`](crate::export_strategy).
#[doc(hidden)]
pub struct __Export<T>(PhantomData<T>);

impl<T: Strategy + Default> crate::__bindings::strategy::Guest for __Export<T> {
    fn plan(
        state: crate::__bindings::wit::RolloutState,
    ) -> Result<crate::__bindings::wit::Step, String> {
        T::default().plan(&state.into()).map(Into::into)
    }

    fn check_params(
        service: crate::__bindings::wit::Service,
    ) -> Result<(), crate::__bindings::wit::ParamError> {
        T::default()
            .check_params(&service.into())
            .map_err(Into::into)
    }
}

/// Exports a [`Strategy`] as the component's `plan` and `check-params` functions.
///
/// The type must implement [`Strategy`] and [`Default`]. Use the macro once, at the top level
/// of the plugin crate's `lib.rs`:
///
/// ```
/// use orca_plugin_sdk::strategy::Strategy;
/// use orca_plugin_sdk::types::{Action, RolloutState, Step};
///
/// #[derive(Default)]
/// struct AllAtOnce;
///
/// impl Strategy for AllAtOnce {
///     fn plan(&self, _state: &RolloutState) -> Result<Step, String> {
///         Ok(Step::of([Action::Promote, Action::Done]))
///     }
/// }
///
/// orca_plugin_sdk::export_strategy!(AllAtOnce);
/// # fn main() {}
/// ```
///
/// The export itself is only emitted when compiling for wasm (`target_family = "wasm"`), so
/// the same crate builds and runs its unit tests natively; the trait bounds are checked on
/// every target.
#[macro_export]
macro_rules! export_strategy {
    ($ty:ty) => {
        const _: () = {
            fn __orca_requires_strategy_and_default<
                T: $crate::strategy::Strategy + ::core::default::Default,
            >() {
            }
            let _ = __orca_requires_strategy_and_default::<$ty>;
        };
        #[cfg(target_family = "wasm")]
        #[allow(unsafe_code)]
        const _: () = {
            type __OrcaStrategyExport = $crate::strategy::__Export<$ty>;
            $crate::__bindings::strategy::export!(
                __OrcaStrategyExport with_types_in $crate::__bindings::strategy
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Traffic;

    #[test]
    fn invalid_params_name_their_key() {
        let service = Service {
            params: vec![crate::types::Pair {
                key: "n".into(),
                value: "\"abc\"".into(),
            }],
            ..Service::default()
        };
        let from_parse: InvalidParam = service.param_u64("n").unwrap_err().into();
        assert_eq!(from_parse.key, "n");
        assert_eq!(
            String::from(from_parse),
            "parameter \"n\": expected a non-negative integer, got \"abc\""
        );
        assert_eq!(
            InvalidParam::new("w", "too big").to_string(),
            "parameter \"w\": too big"
        );
    }

    #[test]
    fn host_limits_are_checked() {
        assert!(validate_step(&Step::of([Action::ScaleCandidate(MAX_SCALE)])).is_ok());
        assert!(validate_step(&Step::of([Action::ScaleStable(MAX_SCALE + 1)])).is_err());
        assert!(validate_step(&Step::of([Action::SetTraffic(Traffic::default())])).is_err());
        assert!(validate_step(&Step::of(vec![Action::Done; MAX_ACTIONS + 1])).is_err());
        assert!(validate_step(&Step::of([Action::Rollback("x".repeat(MAX_REASON + 1))])).is_err());
        assert!(validate_step(&Step::new().with_state(vec![0; MAX_PLUGIN_STATE + 1])).is_err());
    }
}
