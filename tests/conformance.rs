//! The backend conformance suite, one test per check, on the backend `VRAMSWAP_TEST_BACKEND`
//! names (`sim` by default).

mod common;

use vramswap::conformance;

fn run(name: &str) {
    let b = common::test_backend();
    let check = conformance::checks()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no conformance check named {name}"));
    let out = conformance::run_one(b.as_ref(), &check);
    assert!(
        out.passed,
        "{name} failed on {}: {}",
        b.kind(),
        out.message.unwrap_or_default()
    );
    if let Some(sim) = b.sim_device() {
        common::assert_device_clean(sim, name);
    }
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { run(stringify!($name)); } )*

        #[test]
        fn every_check_has_a_test() {
            let listed = [$(stringify!($name)),*];
            for c in conformance::checks() {
                assert!(listed.contains(&c.name), "conformance check {} has no test", c.name);
            }
        }
    };
}

conformance_tests![
    device_reports_sane_properties,
    pinned_copy_round_trips_random_bytes,
    pageable_copy_round_trips_once_the_stream_is_synchronized,
    device_to_device_copy_moves_bytes,
    memset_sets_every_byte,
    work_on_one_stream_runs_in_order,
    stream_wait_event_orders_streams,
    event_query_is_true_after_synchronize,
    event_elapsed_time_is_non_negative,
    allocation_past_capacity_is_out_of_memory,
    zero_byte_allocation_is_rejected,
    free_of_unknown_pointer_is_rejected,
    freed_memory_is_returned_to_the_device,
    vmm_mapping_gives_stable_addresses_across_remaps,
    vmm_copy_into_unmapped_range_fails,
    vmm_misaligned_mapping_is_rejected,
    vmm_partial_unmap_is_rejected,
    stream_ordered_allocation_round_trips,
    registered_host_memory_copies_asynchronously,
    backend_is_usable_from_any_thread,
    checksum_kernel_matches_host,
    fill_kernel_matches_host,
    cast_kernels_match_half,
];
