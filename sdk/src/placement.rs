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
        nodes: crate::__bindings::wit::Nodes,
    ) -> Result<crate::__bindings::wit::Verdicts, String> {
        let nodes = crate::__bindings::convert::nodes(nodes);
        let verdicts = T::default().place(&request.into(), &nodes)?;
        crate::__bindings::convert::verdicts(verdicts, nodes.len())
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

#[cfg(test)]
mod tests {
    use crate::__bindings::convert;
    use crate::__bindings::wit;
    use crate::types::Verdict;

    #[test]
    fn columns_become_nodes_and_verdicts_become_columns() {
        let nodes = convert::nodes(wit::Nodes {
            cpu_millis: vec![1000, 2000, 3000],
            cpu_millis_free: vec![500, 600, 700],
            memory_bytes: vec![1, 2, 3],
            memory_bytes_free: vec![4, 5, 6],
            instances: vec![0, 1, 2],
            existing: vec![0, 0, 1],
            draining: vec![1],
            unselected: vec![2, 9],
        });
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[1].cpu_millis_free, 600);
        assert_eq!(nodes[2].existing, 1);
        assert!(!nodes[0].draining && nodes[1].draining && !nodes[2].draining);
        assert!(nodes[0].selected && nodes[1].selected && !nodes[2].selected);

        let v = convert::verdicts(
            vec![Verdict::feasible(2, 7), Verdict::infeasible(0, "full")],
            3,
        )
        .unwrap();
        assert_eq!(v.scores, vec![0, 0, 7]);
        let infeasible: Vec<(u32, &str)> = v
            .infeasible
            .iter()
            .map(|i| (i.node, i.reason.as_str()))
            .collect();
        assert_eq!(infeasible, vec![(0, "full"), (1, "no verdict")]);
        assert!(convert::verdicts(vec![Verdict::feasible(3, 1)], 3).is_err());
        assert!(convert::verdicts(vec![Verdict::feasible(1, 1); 2], 3).is_err());
    }
}
