"""dpgdiff: DPG-Diff and its baselines for cross-domain sequential recommendation (plain PyTorch).

`dpgdiff/config.py` owns every knob: one typed `Config` (the model, diffusion, loss, augment, train
and eval sections of `dpgdiff/config_sections.py`, each field with its default and why, and the c2dsr
and abxi sections of `dpgdiff/config_baselines.py`) with YAML reading and writing, `section.key=value`
overrides (`parse_assignment`, `coerce_value`) and the one validation, `Config.validate`;
`dpgdiff/config_fields.py` says which fields each model reads
(`MODEL_FIELDS`), which another field switches off (`INERT_WHEN`), and which levers were retired (`RETIRED`).

`dpgdiff/files.py` owns files in and out: `atomic_write` (temp file in the same folder, then a
rename) and `replace_dir` for checkpoint folders, through which every file the package writes goes,
and `read_yaml`, whose errors name the file and line.

`dpgdiff/data/` owns the datasets: the C2DSR reader, verified downloads, interaction logs, the
synthetic generator, the dataset card and fingerprint, and `DatasetRef` (`ref.py`), the value that
says which dataset to load, with the dataset flags both command lines share.

`dpgdiff/models/` owns the networks: layers, encoder (Eq. 8), diffusion (Eq. 1-5, with the one reverse chain), denoiser (Eq. 9),
losses (Eq. 6, 10-13), augmentations, DPG-Diff itself (Alg. 1, Eq. 15), and the SASRec, SASRec-single,
DiffuRec, C2DSR and ABXI baselines, all built by `build_model(config, dataset)`; `dpgdiff/optim.py` builds
the optimiser and the learning-rate schedule.

`dpgdiff/evaluation/` owns the metrics, one module per idea: `evaluator.py` the shared `Evaluator`
every model and baseline is scored by, `candidates.py` its saved candidate lists (the sampled 1 + 999
and what full ranking leaves out), `metrics.py` the sampled and full-ranking metrics (`EvalResult`),
and `noise.py` the RQ3 noise injection; `dpgdiff/baselines.py` holds the popularity and random
scorers; `dpgdiff/significance.py` the paired tests on per-case metrics; and
`dpgdiff/diagnose.py` the diagnostics of the diffusion part (does x̂_0 depend on x_t, does K matter).

`dpgdiff/training/` owns training: `loop.py` is the function `dpgdiff.train` (epochs, validation,
early stopping, the final test), `checkpoints.py` the checkpoint and best.pt formats with the
`LoopState` they carry and `load_model`, `reproducibility.py` devices, precision, seeds and RNG
state, so that a resumed run continues exactly, and `cpu_memory.py` the allocator setting of CPU runs
(freed activations stay in the process heap: glibc's `mallopt`, process-wide, heap trimmed after the run).

`dpgdiff/recommend.py` owns recommending from a checkpoint: top-k in the user's own item ids (through
the id map in `dpgdiff/data/ids.py`), the code path of both `python -m dpgdiff recommend` and the MLflow
model.

`dpgdiff/mkl_amd.py` lets torch's MKL use its AVX2 kernels on AMD processors (a vendor-check shim
loaded before torch; 2-3x on the CE's skinny matmuls there, nothing elsewhere). `import dpgdiff` runs it,
so import dpgdiff before torch.

`dpgdiff/cli.py` owns `python -m dpgdiff {data,train,evaluate,diagnose,recommend}`: one small function
per subcommand.
"""

from dpgdiff import mkl_amd

mkl_amd.enable()  # must run before anything imports torch: see dpgdiff/mkl_amd.py

from dpgdiff.config import Config, ConfigError  # noqa: E402
from dpgdiff.training import TrainingDivergedError, TrainResult, train  # noqa: E402

__all__ = ["Config", "ConfigError", "TrainResult", "TrainingDivergedError", "train"]
__version__ = "0.1.0"
