//! An image job (`Assign.image`, issue 12): the image of a recipe made by
//! [`crate::image::build_image`] instead of a package build, its files then
//! reported as the job's artifacts through the same listing, inline and
//! upload path as packages (big files stream and resume like any other).
//!
//! Artifacts: each format (kind `image`), `manifest.json` and `SHA256SUMS`
//! (kind `other`), `image.log` and the job's `build.log` (kind `log`), the
//! listing. A failed `test` fails the job, and its files are still sent (kept
//! by the master for inspection).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_core::listing::ListingEntry;
use kiln_core::state::ArtifactKind;
use kiln_proto as pb;
use tokio::sync::watch;

use super::{bare_failure, list_log_file, list_result, JobLog, Shared};
use crate::backend::{make_private_dir, LogSink};
use crate::image::{build_image, ImageOutcome, ImageRequest, IMAGE_LOG};

/// Where the image's files are made, in the job directory.
const OUT: &str = "image";
/// The image build's scratch directory, in the job directory.
const WORK: &str = "image-work";

/// Run an image job: the result and the files to upload by name.
pub(super) async fn run(
    shared: &Arc<Shared>,
    a: &pb::Assign,
    image: &pb::ImageJob,
    dir: &Path,
    log: &JobLog,
    cancel: watch::Receiver<bool>,
) -> (pb::Finished, HashMap<String, PathBuf>) {
    let out = dir.join(OUT);
    let built = match request(a, image, dir) {
        Ok(req) => build_image(&req, &shared.roots, log, cancel)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let (mut success, mut message, outcome) = match built {
        Ok(o) if o.canceled => {
            return (super::canceled(a, o.message, log), HashMap::new());
        }
        Ok(o) => (o.success, o.message.clone(), Some(o)),
        Err(e) => (false, format!("worker error: {e}"), None),
    };
    let mut files: HashMap<String, PathBuf> = HashMap::new();
    let mut entries = Vec::new();
    if let Some(o) = &outcome {
        if let Err(why) = take_files(o, &out, &mut files, &mut entries) {
            success = false;
            message = why;
        }
    }
    if success {
        log.write(b"kiln: build succeeded\n");
    } else {
        log.write(format!("kiln: build failed: {message}\n").as_bytes());
    }
    let log_text = match log.text.lock() {
        Ok(mut t) => {
            t.file.take();
            std::mem::take(&mut t.mem)
        }
        Err(_) => Vec::new(),
    };
    list_result(a, dir, success, message, files, entries, log_text, None).unwrap_or_else(|e| {
        (
            bare_failure(a.job_id, a.attempt, &a.arch, format!("worker error: {e}")),
            HashMap::new(),
        )
    })
}

/// The image request of an Assign: the recipe read (and checked by
/// `build_image`), its directories in the job directory.
fn request(a: &pb::Assign, image: &pb::ImageJob, dir: &Path) -> Result<ImageRequest, String> {
    let recipe = serde_json::from_str(&image.recipe_json)
        .map_err(|e| format!("the image recipe does not read: {e}"))?;
    make_private_dir(dir).map_err(|e| format!("creating the job directory: {e}"))?;
    Ok(ImageRequest {
        recipe,
        arch: a.arch.clone(),
        repos: image.repos.clone(),
        releasever: image.releasever.clone(),
        gpgcheck: image.gpgcheck,
        gpgkeys: image.gpgkeys.clone(),
        build_id: a.build_id,
        work: dir.join(WORK),
        out: dir.join(OUT),
        timeout: Duration::from_secs(a.timeout_secs.max(1)),
    })
}

/// List what the image build made (whatever it got to, also when it
/// failed): the formats, the manifest and sums, its log.
fn take_files(
    o: &ImageOutcome,
    out: &Path,
    files: &mut HashMap<String, PathBuf>,
    entries: &mut Vec<ListingEntry>,
) -> Result<(), String> {
    for f in o.files.iter().filter(|f| f.name != IMAGE_LOG) {
        kiln_core::names::check_file_name(&f.name).map_err(|e| {
            format!(
                "the worker refused an image file named {}: {e}",
                kiln_core::names::shown(&f.name)
            )
        })?;
        if f.path != out.join(&f.name) {
            return Err(format!(
                "the image file {} is not in the image's directory",
                kiln_core::names::shown(&f.name)
            ));
        }
        let kind = if f.format.is_some() {
            ArtifactKind::Image
        } else {
            ArtifactKind::Other
        };
        if files.insert(f.name.clone(), f.path.clone()).is_some() {
            return Err(format!(
                "the image build made two files named {}",
                kiln_core::names::shown(&f.name)
            ));
        }
        entries.push(ListingEntry {
            name: f.name.clone(),
            kind,
            size: f.size,
            sha256: f.sha256.clone(),
            nevra: None,
        });
    }
    // Complete only now: hashed as it is.
    list_log_file(out, IMAGE_LOG, files, entries).map_err(|e| format!("worker error: {e}"))?;
    Ok(())
}
