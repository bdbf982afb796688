//! Placement policies (the `placement` world): filter and score every node for one instance,
//! in the shape of the Kubernetes scheduler framework.

use std::marker::PhantomData;

use crate::types::{Node, PlacementRequest, Verdict};

/// A placement policy.
///
/// For each instance to place the host calls [`place`](Placement::place) with every node of
/// the cluster; the answer has one [`Verdict`] per node (feasible with a score, or
/// infeasible with a reason), naming the node by its index in `nodes`. The host picks the
/// feasible node with the highest score; when none is feasible it shows the reasons. Nodes
/// missing from the answer count as infeasible; an index out of range or answered twice makes
/// the whole answer invalid.
///
/// Nodes carry only numbers and flags (capacity, this service's instances on the node,
/// draining, whether the node matches the service's `placement.node` pin), so a call over
/// hundreds of nodes stays in the microseconds.
///
/// Plugins are stateless: the export glue builds the type with `Default::default()` for every
/// call. Register it with [`export_placement!`](crate::export_placement).
pub trait Placement {
    /// One verdict per node in `nodes` for placing one instance of `request`.
    fn place(&self, request: &PlacementRequest, nodes: &[Node]) -> Result<Vec<Verdict>, String>;
}

/// The generated `Guest` implementation behind [`export_placement!`](crate::export_placement).
#[doc(hidden)]
pub struct __Export<T>(PhantomData<T>);

impl<T: Placement + Default> crate::__bindings::placement::Guest for __Export<T> {
    fn place(
        request: crate::__bindings::wit::PlacementRequest,
        nodes: Vec<crate::__bindings::wit::Node>,
    ) -> Result<Vec<crate::__bindings::wit::Verdict>, String> {
        let nodes: Vec<Node> = nodes.into_iter().map(Into::into).collect();
        T::default()
            .place(&request.into(), &nodes)
            .map(|v| v.into_iter().map(Into::into).collect())
    }
}

/// Exports a [`Placement`] as the component's `place` function.
///
/// The type must implement [`Placement`] and [`Default`]; see
/// [`export_strategy!`](crate::export_strategy) for how the export macros behave.
#[macro_export]
macro_rules! export_placement {
    ($ty:ty) => {
        const _: () = {
            fn __orca_requires_placement_and_default<
                T: $crate::placement::Placement + ::core::default::Default,
            >() {
            }
            let _ = __orca_requires_placement_and_default::<$ty>;
        };
        #[cfg(target_family = "wasm")]
        #[allow(unsafe_code)]
        const _: () = {
            type __OrcaPlacementExport = $crate::placement::__Export<$ty>;
            $crate::__bindings::placement::export!(
                __OrcaPlacementExport with_types_in $crate::__bindings::placement
            );
        };
    };
}
