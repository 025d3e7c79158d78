//! The unpacker on arbitrary tar bytes, with small limits: Ok or Err, never a
//! panic, and nothing created outside the destination.
#![no_main]

use kiln::archive::{extract_tar, ExtractLimits};
use libfuzzer_sys::fuzz_target;

const LIMITS: ExtractLimits = ExtractLimits { max_entries: 64, max_bytes: 1 << 20, max_depth: 16 };

fuzz_target!(|data: &[u8]| {
    let base = tempfile::tempdir().expect("a temp dir");
    let dest = base.path().join("root");
    std::fs::create_dir(&dest).expect("the destination");
    let _ = extract_tar(data, &dest, &LIMITS);
    // Only the destination may have been written.
    let names: Vec<_> = std::fs::read_dir(base.path()).expect("listing").flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, [std::ffi::OsString::from("root")], "something was created beside the destination");
});
