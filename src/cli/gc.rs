//! `kiln gc`: asks the running kiln to garbage-collect now.

use super::{call, human_bytes, CliError};
use crate::observe::GcReport;

pub async fn gc(base: &str) -> Result<GcReport, CliError> {
    call(base, "/api/v1/kiln/gc", true).await
}

pub fn render(report: &GcReport) -> String {
    format!(
        "freed: {} idle sandboxes, {} unpacked roots ({}), {} archives over budget ({})\n",
        report.sandboxes.items,
        report.roots.items,
        human_bytes(report.roots.bytes),
        report.archives.items,
        human_bytes(report.archives.bytes),
    )
}
