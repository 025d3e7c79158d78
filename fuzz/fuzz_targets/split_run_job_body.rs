//! run_job bodies: a u32-BE length, bincode RunJobHttpRequest, then zlib inputs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((request, inputs)) = kiln::protocol::split_run_job_body(data) {
        // What a decoded header holds round-trips through the encoder.
        let framed = kiln::protocol::frame_run_job_body(&request, inputs).expect("a decoded request encodes");
        let (again, rest) = kiln::protocol::split_run_job_body(&framed).expect("an encoded request decodes");
        assert_eq!(again, request);
        assert_eq!(rest, inputs);
    }
});
