//! Every bincode body kiln decodes from the network, with the limits kiln uses:
//! it must answer Ok or Err, never panic, loop or allocate beyond the input.
#![no_main]

use kiln::protocol::{
    decode, AllocJobHttpResponse, AssignJobResult, HeartbeatServerResult, JobAlloc, RunJobHttpRequest, Toolchain,
    UpdateJobStateResult, MAX_RUN_JOB_HEADER, MAX_SMALL_MESSAGE,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Bodies kiln's server decodes (assign_job, its own scheduler's alloc_job).
    let _ = decode::<Toolchain>(data, MAX_SMALL_MESSAGE);
    let _ = decode::<RunJobHttpRequest>(data, MAX_RUN_JOB_HEADER);
    // Answers of upstream's scheduler, and what the client side decodes.
    let _ = decode::<HeartbeatServerResult>(data, MAX_SMALL_MESSAGE);
    let _ = decode::<UpdateJobStateResult>(data, MAX_SMALL_MESSAGE);
    let _ = decode::<AllocJobHttpResponse>(data, MAX_SMALL_MESSAGE);
    let _ = decode::<AssignJobResult>(data, MAX_SMALL_MESSAGE);
    let _ = decode::<JobAlloc>(data, MAX_SMALL_MESSAGE);
});
