"""The catalogue of bad inputs: every case runs through the real command line.

``CASES`` below *is* the catalogue. ``docs/ERRORS.md`` is generated from it
(``python tests/test_error_catalogue.py --write``) and :func:`test_errors_md_is_generated_from_the_table`
fails when the two differ, so the documentation cannot drift from what the tools do.

Each case runs ``python -m regnp.<tool> <args>`` in a fresh folder holding the fixture files of
:func:`make_fixtures` — in this process, through the tool's ``main(argv)`` (:func:`run_in_process`:
seconds for the whole table instead of minutes of fresh interpreters), except the Ctrl-C cases,
which need a real signal in a child process of their own (marked ``slow``) — and checks:

* ``error``: exit status ≠ 0 and the last line of stderr is the documented ``error:`` line;
* ``warning``: exit status 0 and the documented ``warning:`` line is in stderr;
* ``interrupt``: SIGINT (Ctrl-C) once the tool is busy; exit status 130 and the documented line;
* always: no ``Traceback`` and no file that existed before was changed or removed.

A documented message may contain ``…``, which matches any text (a path, a library's own words).
Cases that read the real image sets are marked ``data=True`` and skip without them (the
``data_root`` fixture); ``{data}`` in their arguments is the data folder.
"""
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from process_helpers import ctrl_c_as_in_a_terminal, run_main

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ERRORS.md"

Case = namedtuple("Case", "tool args message what kind data wait", defaults=("error", False, None))

# The smallest network that trains: a 32×32 U-Net with two levels and a 5×5 filter.
# Tools whose refusals must not even create an empty folder (train may leave its --out folder).
MINE = ("evaluate", "register", "data", "bench", "precompile")

TINY = "--size 32 --enc 4,8 --dec 8,8,8,8 --kernel-size 5 --pairs 4 --steps 2 --val-pairs 0"
IMG = "--fixed F.npy --moving M.npy"
CK = "--checkpoint ck"
EV = "--checkpoint ck --pairs 2"

CASES = [
    # ---------------------------------------------------------------------------------- train
    Case("train", f"{TINY} --out ck",
         "error: --out ck already holds a run (checkpoint.npz, log.jsonl); continue it with "
         "--resume, replace it with --overwrite, or choose another --out",
         "a new run in a folder that holds a run"),
    Case("train", "--sigma 60 --size 64 --steps 1 --out big",
         "error: sigma 60 is more than the 'gmm' deformations draw with bumps 28–60 px wide (px "
         "at 256×256): the largest is 42; the invertible velocity-field deformations (--dataset "
         "chaos-svf or phantom-svf, field='svf') draw up to 56",
         "a σ larger than the field generator draws (once a RuntimeError traceback)"),
    Case("train", "--out ck --resume --lr 0.5",
         "error: --resume: these options contradict the checkpoint's run: --lr 0.5 (checkpoint: "
         "0.001). Leave them out (the checkpoint's values are used) or start a new run in "
         "another --out",
         "--resume with an option that contradicts the checkpoint"),
    Case("train", "--out ck --resume --overwrite",
         "error: --resume continues the run in --out and --overwrite replaces it; give one of them",
         "--resume and --overwrite together"),
    Case("train", "--out empty_run --resume",
         "error: --resume: there is no checkpoint in --out empty_run (empty_run/checkpoint.npz "
         "not found); start a new run without --resume",
         "--resume in a folder without a checkpoint"),
    Case("train", "--out corrupt --resume",
         "error: cannot read corrupt/checkpoint.npz: …; the file is corrupt",
         "--resume from a corrupt checkpoint"),
    Case("train", "--batch-size 0", "error: --batch-size must be a positive integer, got 0",
         "a zero batch size"),
    Case("train", "--batch-size -2", "error: --batch-size must be a positive integer, got -2",
         "a negative batch size (once trained on batches of 998)"),
    Case("train", "--save-every 0", "error: --save-every must be a positive integer, got 0",
         "a zero checkpoint interval"),
    Case("train", "--log-every 0", "error: --log-every must be a positive integer, got 0",
         "a zero logging interval"),
    Case("train", "--val-pairs -1",
         "error: --val-pairs must be ≥ 0 (0 turns it off), got -1", "negative validation pairs"),
    Case("train", "--pairs 0",
         "error: --pairs must be a positive integer (or left out for the set's default), got 0",
         "zero training pairs (once silently 1000)"),
    Case("train", "--steps 0", "error: --steps must be a positive integer, got 0", "zero steps"),
    Case("train", "--kernel-size 4",
         "error: --kernel-size must be odd (the filter has a centre), got 4", "an even filter size"),
    Case("train", "--lr nan", "error: --lr must be a finite number > 0, got nan", "a NaN learning rate"),
    Case("train", "--lambda -1", "error: --lambda must be a finite number ≥ 0, got -1.0",
         "a negative λ"),
    Case("train", "--bidir",
         "error: --bidir needs --integrate STEPS: the inverse warp F∘φ⁻¹ uses φ⁻¹ = exp(−v), which "
         "only a velocity field gives (e.g. --integrate 7 --bidir)",
         "the bidirectional loss without a velocity field"),
    Case("train", "--model dirnet --integrate 7",
         "error: --integrate applies to metareg, ablated, vm1, vm2, not dirnet",
         "diffeomorphic mode for a model that does not have it"),
    Case("train", "--integrate -1", "error: --integrate must be ≥ 0 (0 turns it off), got -1",
         "a negative number of squarings"),
    Case("train", "--int-downsize 1",
         "error: --int-downsize sets where --integrate integrates; give --integrate STEPS too "
         "(e.g. --integrate 7)",
         "--int-downsize without --integrate"),
    Case("train", "--seg-weight -0.5", "error: --seg-weight must be a finite number ≥ 0, got -0.5",
         "a negative segmentation weight"),
    Case("train", "--seg-labels 1,4",
         "error: --seg-labels chooses the labels of the segmentation loss; give --seg-weight W "
         "(> 0) too, e.g. --seg-weight 0.1",
         "--seg-labels without --seg-weight"),
    Case("train", "--seg-weight 0.1 --seg-labels 1,7",
         "error: --seg-labels 1,7: the phantom masks hold labels 1 liver, 2 right kidney, 3 left "
         "kidney, 4 spleen; give distinct values among them",
         "a supervising label the set's masks do not have"),
    Case("train", "--size 50 --pairs 4 --out r50",
         "error: --size 50 is not divisible by 2^4 = 16 (metareg halves the image 4 times); use a "
         "multiple of 16, e.g. 48 or 64",
         "a size the U-Net cannot halve 4 times"),
    Case("train", "--out afile",
         "error: --out afile: afile is a file, not a folder; choose another --out",
         "--out pointing at a file"),
    Case("train", "--out afile/run",
         "error: --out afile/run: afile is a file, not a folder; choose another --out",
         "--out under a file"),
    Case("train", "--dataset chaos --data-root nowhere --out r",
         "error: data root 'nowhere' does not exist; expected layout: …",
         "a data folder that does not exist"),
    # ------------------------------------------------------------------------------- evaluate
    Case("evaluate", "--checkpoint nothing.npz",
         "error: checkpoint file nothing.npz not found (a checkpoint is written by python -m "
         "regnp.train into its --out folder)",
         "a checkpoint that does not exist"),
    Case("evaluate", "--checkpoint empty_run",
         "error: the folder empty_run holds no checkpoint.npz (a checkpoint is written by python "
         "-m regnp.train into its --out folder)",
         "a run folder without a checkpoint"),
    Case("evaluate", "--checkpoint corrupt", "error: cannot read corrupt/checkpoint.npz: …; the file is corrupt", "a corrupt checkpoint"),
    Case("evaluate", "--checkpoint edited --pairs 2",
         "error: edited: its model description does not build a model (…); the checkpoint was "
         "edited or comes from another version",
         "a hand-edited checkpoint: a wrong-typed model option (\"kernel_size\": \"5\")"),
    Case("evaluate", "--checkpoint edited_data --pairs 2",
         "error: edited_data: its data description is not valid (size '32' is not a positive "
         "integer (override: --size)); the checkpoint was edited or comes from another version",
         "a hand-edited checkpoint: a wrong-typed data option (\"size\": \"32\")"),
    Case("evaluate", f"{CK} --pairs 0", "error: --pairs must be a positive integer, got 0",
         "zero pairs (once silently all pairs)"),
    Case("evaluate", f"{CK} --pairs -1", "error: --pairs must be a positive integer, got -1",
         "negative pairs"),
    Case("evaluate", f"{CK} --size 0", "error: --size must be a positive integer, got 0",
         "a zero size"),
    Case("evaluate", f"{EV} --size 50",
         "error: --size 50 is not divisible by 2^2 = 4 (metareg halves the image 2 times); use a "
         "multiple of 4, e.g. 48 or 52",
         "a size the network cannot halve (names the nearest valid sizes)"),
    Case("evaluate", f"{EV} --sigma nan", "error: --sigma must be a finite number ≥ 0, got nan",
         "a NaN σ"),
    Case("evaluate", f"{EV} --dataset mnist",
         "error: unknown dataset 'mnist'; choose one of ['acdc', 'chaos', 'jsrt', 'phantom']…",
         "an unknown data set"),
    Case("evaluate", f"{EV} --compare nothing.json",
         "error: --compare nothing.json: file not found", "a --compare file that does not exist"),
    Case("evaluate", f"{EV} --compare notes.txt",
         "error: --compare notes.txt is not a JSON file (…); give a metrics.json written by "
         "python -m regnp.evaluate",
         "a --compare file that is not JSON"),
    Case("evaluate", f"{EV} --compare cmp_nopairs.json",
         "error: --compare cmp_nopairs.json has no list of per-pair results ('pairs'); give a "
         "metrics.json written by python -m regnp.evaluate",
         "a --compare JSON without per-pair results"),
    Case("evaluate", f"{EV} --compare cmp_null.json",
         "error: --compare cmp_null.json: pair 1 has no finite 'dice_after' value (got None); the "
         "file was edited or is not from regnp.evaluate",
         "a --compare file with a missing Dice value"),
    Case("evaluate", f"{EV} --compare cmp_one.json",
         "error: --compare cmp_one.json holds 1 pair(s); a t-test needs at least 2",
         "a --compare file with one pair"),
    Case("evaluate", f"{EV} --out afile",
         "error: --out afile is a file, not a folder; choose another --out", "--out pointing at a file"),
    Case("evaluate", f"{EV} --out blocked",
         "error: cannot write blocked/table.md: a folder (or other non-file) of that name is in "
         "the way; remove it or choose another --out",
         "an output name taken by a folder (checked before metrics.json is written)"),
    Case("evaluate", f"{EV} --dataset chaos --data-root nowhere",
         "error: data root 'nowhere' does not exist; expected layout: …",
         "a data folder that does not exist"),
    Case("evaluate", "--checkpoint ck/checkpoint.npy --pairs 2",
         "error: ck/checkpoint.npy: a checkpoint is the .npz file written by python -m "
         "regnp.train (or its run folder), not a .npy file",
         "a checkpoint named with another suffix (once read ck/checkpoint.npz silently)"),
    Case("evaluate", "--checkpoint step_five --pairs 2",
         "error: step_five/checkpoint.npz: its step 'five' is not a whole number ≥ 0; the "
         "checkpoint was edited or comes from another version",
         "a hand-edited checkpoint: a step that is not a number (once int()'s own message)"),
    Case("evaluate", "--checkpoint rng_null --pairs 2",
         "error: rng_null/checkpoint.npz: its random-stream state (rng) is None, not a mapping; "
         "the checkpoint was edited or comes from another version",
         "a hand-edited checkpoint: a null random-stream state (once accepted)"),
    Case("evaluate", "--checkpoint edited_big --pairs 2",
         "error: edited_big: building its model needs about … of memory, more than the … "
         "available on this machine (…); the checkpoint was edited or comes from another version",
         "a hand-edited checkpoint: kernel_size 999999 (once a MemoryError traceback)"),
    Case("evaluate", f"{EV} --size 1048576",
         "error: evaluating at 1048576×1048576 needs about … of memory, more than the … "
         "available on this machine (…); use a smaller --size",
         "a size whose pairs cannot fit in memory (--size 4096 once grew to 23.7 GB and was "
         "killed)"),
    Case("evaluate", f"{EV} --out cmpdir --compare cmpdir/metrics.json",
         "error: --out cmpdir would replace the input cmpdir/metrics.json (this command writes "
         "metrics.json there); choose another --out or move the input",
         "an output that would replace a --compare input"),
    Case("evaluate", f"{EV} --size 64 --out ev64",
         "warning: --size 64 differs from the training size 32: the network learned "
         "displacements in pixels at 32×32, so these scores are not comparable with ones at the "
         "training size",
         "a size other than the training size (evaluated, with a warning)", kind="warning"),
    Case("evaluate", f"{EV} --sigma 0 --out ev0",
         "warning: --sigma 0 draws no deformation: every moving image equals its fixed image, so "
         "the scores only show what the network does to identical pairs",
         "σ = 0 (evaluated, with a warning)", kind="warning"),
    Case("evaluate", f"{EV} --dataset acdc --data-root {{data}} --sigma 16 --out evacdc",
         "warning: --sigma 16 is ignored: the acdc pairs are real image pairs, not synthetic "
         "deformations",
         "--sigma for a set of real pairs (evaluated, with a warning)", kind="warning", data=True),
    Case("evaluate", "--checkpoint ck --size 256 --out big",
         "interrupted (Ctrl-C); nothing was written", "Ctrl-C while evaluating",
         kind="interrupt", wait="evaluate"),
    # ------------------------------------------------------------------------------- register
    Case("register", f"--fixed nothing.png --moving M.npy {CK} --out res",
         "error: image file 'nothing.png' not found", "an image that does not exist"),
    Case("register", f"--fixed imgdir --moving M.npy {CK} --out res",
         "error: image 'imgdir' is a folder, not a file; give a .png or .npy file",
         "a folder given as an image (once \"not found\")"),
    Case("register", f"--fixed F.tif --moving M.npy {CK} --out res",
         "error: F.tif: unsupported file type; give a .png or .npy file", "an unsupported file type"),
    Case("register", f"--fixed corrupt.npy --moving M.npy {CK} --out res",
         "error: cannot read corrupt.npy as a .npy array (…)", "a corrupt .npy file"),
    Case("register", f"--fixed broken.png --moving M.npy {CK} --out res",
         "error: cannot read image 'broken.png' as PNG (…); the file is corrupt or not an image",
         "a corrupt PNG"),
    Case("register", f"--fixed vol.npy --moving M.npy {CK} --out res",
         "error: vol.npy has shape (2, 32, 32); expected a 2-D image (H, W)", "a 3-D array"),
    Case("register", f"--fixed F.npy --moving M40.npy {CK} --out res",
         "error: fixed is 32x32 but moving is 40x32; resample them to one grid first",
         "images of different sizes"),
    Case("register", f"{IMG} --out res",
         "error: --checkpoint is required with --method network (train one with python -m "
         "regnp.train, or use --method rkhs, which needs no training)",
         "no checkpoint for the network method"),
    Case("register", f"{IMG} --checkpoint edited --out res",
         "error: edited: its model description does not build a model (…); the checkpoint was "
         "edited or comes from another version",
         "a hand-edited checkpoint with a wrong-typed option"),
    Case("register", f"{IMG} --checkpoint corrupt --out res", "error: cannot read corrupt/checkpoint.npz: …; the file is corrupt",
         "a corrupt checkpoint"),
    Case("register", f"--fixed complex.npy --moving M.npy {CK} --out res",
         "error: complex.npy holds complex values (complex64); registration needs real "
         "intensities: save np.abs(x) (magnitude) or x.real instead",
         "a complex image (once its imaginary part was dropped silently)"),
    Case("register", f"--fixed nan.npy --moving M.npy {CK} --out res",
         "error: nan.npy contains 3 NaN/Inf value(s); fix or mask them in the file (e.g. "
         "np.nan_to_num) before registering",
         "an image with NaN values"),
    Case("register", f"--fixed zeros.npy --moving zeros.npy {CK} --out res",
         "error: zeros.npy is constant (every pixel is 0): there is nothing to register; check "
         "that the right file was given",
         "an all-zero image (once \"registered\")"),
    Case("register", f"--fixed int16.npy --moving M.npy {CK} --out res",
         "warning: int16.npy is integer (int16); converting it to float (intensities are then "
         "min–max normalised to [0, 1])",
         "an integer image (converted, with a warning)", kind="warning"),
    Case("register", f"--fixed bool.npy --moving M.npy {CK} --out res",
         "warning: bool.npy is a boolean array; using it as a 0/1 image (intensities are then "
         "min–max normalised to [0, 1])",
         "a boolean image (converted, with a warning)", kind="warning"),
    Case("register", f"--fixed f16.npy --moving M.npy {CK} --out res",
         "warning: f16.npy is float16; converting it to float32 (intensities are then min–max "
         "normalised to [0, 1])",
         "a float16 image (converted, with a warning)", kind="warning"),
    Case("register", f"{IMG} {CK} --fixed-mask Fm.npy --out res",
         "error: give both --fixed-mask and --moving-mask to report Dice", "only one mask"),
    Case("register", f"{IMG} {CK} --fixed-mask mask_frac.npy --moving-mask Mm.npy --out res",
         "error: mask mask_frac.npy has non-integer values (e.g. 0.5); a mask is an integer label "
         "map (resample masks by nearest neighbour, never bilinearly)",
         "a float mask with fractional values (once a traceback)"),
    Case("register", f"{IMG} {CK} --fixed-mask mask_nan.npy --moving-mask Mm.npy --out res",
         "error: mask mask_nan.npy contains 4 NaN/Inf value(s); a mask is an integer label map "
         "(0 = background)",
         "a mask with NaN (once a traceback)"),
    Case("register", f"{IMG} {CK} --fixed-mask mask_neg.npy --moving-mask Mm.npy --out res",
         "error: mask mask_neg.npy has negative label value(s) [-1]; labels must be ≥ 0 (0 = "
         "background)",
         "a mask with negative labels"),
    Case("register", f"{IMG} {CK} --fixed-mask Fm.npy --moving-mask mask40.npy --out res",
         "error: masks must have the image size (32, 32); got (32, 32) and (40, 32)",
         "a mask of another size"),
    Case("register", f"{IMG} {CK} --fixed-mask mask_float.npy --moving-mask Mm.npy --out res",
         "warning: mask mask_float.npy is stored as float32; using its values as integer labels",
         "a float mask holding whole numbers (converted, with a warning)", kind="warning"),
    Case("register", f"{IMG} {CK} --fixed-mask mask_lab2.npy --moving-mask Mm.npy --out res",
         "warning: label(s) [2] of the fixed mask are absent from the moving mask Mm.npy: they "
         "score Dice 0 before and after; check that the masks use the same label values",
         "fixed-mask labels the moving mask lacks", kind="warning"),
    Case("register", f"{IMG} {CK} --fixed-mask mask_empty.npy --moving-mask mask_empty.npy "
         "--out res",
         "warning: the fixed mask mask_empty.npy has no labels (every pixel is 0); Dice is scored "
         "per label of the fixed mask, so it is not reported",
         "all-empty masks (once \"Dice nan → nan\")", kind="warning"),
    Case("register", f"{IMG} --method rkhs --iterations 0 --out res",
         "error: --iterations must be a positive integer, got 0", "zero solver iterations"),
    Case("register", "--fixed big.npy --moving big2.npy --method rkhs --gram dense --out res",
         "error: --gram dense builds the (H·W)² Gram matrix, 34.4 GB for this 256×256 image (at "
         "most 4096 pixels, 64×64); use --gram auto, kronecker or fft (exact and fast)",
         "the dense Gram matrix for a large image (once refused after a minute of solving)"),
    Case("register", "--fixed small.npy --moving small.npy --method rkhs --out res",
         "error: --method rkhs needs images of at least 8×8 pixels, got 5×9",
         "an image too small for the solver's pyramid (once \"use levels ≤ 1\", not an option)"),
    Case("register", f"{IMG} --method rkhs --kernel-width nan --out res",
         "error: --kernel-width must be a finite number > 0, got nan", "a NaN kernel width"),
    Case("register", f"--fixed F.npy --moving it/warped.npy {CK} --out it",
         "error: --out it would replace the input it/warped.npy (this command writes warped.npy "
         "there); choose another --out or move the input",
         "an input inside --out under an output's name (once overwritten)"),
    Case("register", f"{IMG} {CK} --out afile",
         "error: --out afile is a file, not a folder; choose another --out", "--out pointing at a file"),
    Case("register", f"{IMG} {CK} --out afile/res",
         "error: --out afile/res lies under the file afile, not a folder; choose another --out",
         "--out under a file"),
    Case("register", f"{IMG} {CK} --out blocked",
         "error: cannot write blocked/warped.png: a folder (or other non-file) of that name is in "
         "the way; remove it or choose another --out",
         "an output name taken by a folder (checked before any output is written)"),
    Case("register", "--fixed big.npy --moving big2.npy --method rkhs --iterations 100000 --out res",
         "interrupted (Ctrl-C); nothing was written", "Ctrl-C while registering",
         kind="interrupt", wait="rkhs"),
    # ----------------------------------------------------------------------------------- data
    Case("data", "show phantom --n 0", "error: --n must be a positive integer, got 0",
         "zero pairs in the figure"),
    Case("data", "show phantom --n-pairs 0", "error: --n-pairs must be a positive integer, got 0",
         "zero pairs (once silently 1000, and the figure went into the package checkout)"),
    Case("data", "show phantom --size 0", "error: --size must be a positive integer, got 0",
         "a zero size"),
    Case("data", "show phantom --seed -1", "error: --seed must be an integer ≥ 0, got -1",
         "a negative seed"),
    Case("data", "show phantom --sigma nan", "error: --sigma must be a finite number ≥ 0, got nan",
         "a NaN σ"),
    Case("data", "sigma-stats phantom --sigmas 10 -1",
         "error: --sigmas must be a finite number ≥ 0, got -1", "a negative σ in the list"),
    Case("data", "show phantom --out afile/fig.png",
         "error: --out afile/fig.png lies under the file afile, not in a folder; choose another "
         "--out",
         "--out under a file (once a traceback)"),
    Case("data", "show phantom --out fig.xyz",
         "error: --out fig.xyz: unsupported file type '.xyz'; use one of .eps, .jpeg, .jpg, .pdf, "
         ".png, .ps, .svg, .tif, .tiff, .webp",
         "an unsupported figure type (checked before loading)"),
    Case("data", "show phantom --size 50 --n-pairs 2 --n 1 --out fig.png",
         "warning: --size 50 is fine for looking at the data, but the U-Net models need a "
         "multiple of 16 (e.g. 48 or 64) to train or evaluate",
         "a size the networks cannot use", kind="warning"),
    Case("data", "show phantom --size 1000000 --out fig.png",
         "error: a 1000000×1000000 pair needs about … of memory, more than the … available on "
         "this machine (…); use a smaller --size",
         "a size whose pairs cannot fit in memory (--size 30000 once a MemoryError traceback)"),
    Case("data", "sigma-stats phantom --size 1000000",
         "error: a 1000000×1000000 pair needs about … of memory, more than the … available on "
         "this machine (…); use a smaller --size",
         "the same for the σ table"),
    Case("data", "show chaos --data-root nowhere",
         "error: data root 'nowhere' does not exist; expected layout: …",
         "a data folder that does not exist"),
    Case("data", "show chaos --data-root afile",
         "error: data root 'afile' is a file, not a folder; expected layout: …",
         "a file given as the data folder (once \"does not exist\")"),
    Case("data", "show chaos --data-root fakeset",
         "error: mask chaos_t2_sub…_z1.png contains label value(s) [9] not among the documented "
         "labels [0, 1, 2, 3, 4]",
         "a mask with an undocumented label"),
    Case("data", "show chaos --data-root fakeset --out fakeset/chaos_mr_t2_abdomen/fig.png",
         "error: --out fakeset/chaos_mr_t2_abdomen/fig.png lies inside the data folder …/fakeset; "
         "the image sets are inputs and are never written: choose another --out",
         "a figure path inside the data folder"),
    Case("data", "show chaos --data-root {data}/chaos_mr_t2_abdomen/images",
         "error: image-set folder '…/chaos_mr_t2_abdomen/images/chaos_mr_t2_abdomen' does not "
         "exist; expected layout: …",
         "--data-root pointing inside a set", data=True),
    Case("data", "sigma-stats phantom --n-pairs 400 --size 256",
         "interrupted (Ctrl-C); nothing was written", "Ctrl-C while computing",
         kind="interrupt", wait="sigma  pairs"),
    # ---------------------------------------------------------------------------- experiments
    Case("study", "transfer --steps 0",
         "python -m regnp.study transfer: error: argument --steps: must be a positive "
         "integer, got 0",
         "zero steps"),
    Case("study", "ablation --jobs 0",
         "python -m regnp.study ablation: error: argument --jobs: must be a positive "
         "integer, got 0",
         "zero worker processes"),
    Case("study", "ablation --steps -5 --list",
         "python -m regnp.study ablation: error: argument --steps: must be a positive "
         "integer, got -5",
         "negative steps"),
    Case("study", "ablation --list --out afile",
         "error: --out afile is a file; give a folder", "--out pointing at a file"),
    Case("study", "steps --quick --phantom --seeds 0 --out badgrid",
         "error: badgrid/phantom_quick_steps_liver16_vm2_lam0.04_seed0/job.json holds a JSON "
         "str, not an object; it was not written by the grid; move it away (the job then starts "
         "afresh) or use another --out",
         "a job.json of the wrong shape (once an AttributeError traceback)"),
    Case("study", "steps --quick --phantom --seeds 0 --jobs 2 --out g2",
         "interrupted (Ctrl-C); finished jobs are saved, interrupted ones resume from their "
         "checkpoints; run the same command again to continue",
         "Ctrl-C while two worker processes train (once ran on, starting queued jobs)",
         kind="interrupt", wait="validation Dice"),
    Case("study", "steps --quick --phantom --seeds 0 --jobs 1 --out g1",
         "interrupted (Ctrl-C); finished jobs are saved, interrupted ones resume from their "
         "checkpoints; run the same command again to continue",
         "Ctrl-C with one job at a time (once two lines and exit 1)",
         kind="interrupt", wait="validation Dice"),
    Case("study", "tables",
         "python -m regnp.study: error: argument experiment: invalid choice: 'tables' (…)",
         "an unknown protocol"),
    # ---------------------------------------------------------------------------------- bench
    Case("bench", "--repeats 0", "error: --repeats must be a positive integer, got 0",
         "zero repeats (once a traceback)"),
    Case("bench", "--repeats -3", "error: --repeats must be a positive integer, got -3",
         "negative repeats"),
    Case("bench", "--only nosuchcase", "error: --only 'nosuchcase' matches no case; the cases are: …",
         "--only matching no case"),
    Case("bench", "--roofline --size 30",
         "error: --size 30 is not divisible by 2^4 = 16; use e.g. 32",
         "a roofline size the U-Net cannot take"),
    Case("bench", "--roofline --model dirnet",
         "error: --model 'dirnet' has no U-Net; the roofline table follows a U-Net (metareg, "
         "vm2, vm1, ablated, rkhs)", "a roofline for a model without a U-Net"),
    Case("bench", "--size 0", "error: --size must be a positive integer, got 0",
         "a zero benchmark size"),
    # ----------------------------------------------------------------------------- precompile
    Case("precompile", "--jobs 0", "error: --jobs must be a positive integer, got 0",
         "zero compiling processes"),
]


# ------------------------------------------------------------------------------------------
# fixture files (built once, copied into each case's folder)
# ------------------------------------------------------------------------------------------
def _blobs(H=32, W=32):
    yy, xx = np.mgrid[:H, :W]
    F = np.exp(-((yy - H / 2) ** 2 + (xx - W / 2) ** 2) / (2 * (H / 6) ** 2))
    M = np.exp(-((yy - H / 2 - 2) ** 2 + (xx - W / 2 + 3) ** 2) / (2 * (H / 6) ** 2))
    return F.astype(np.float32), M.astype(np.float32)


def _edit_checkpoint(src, dst, edit):
    """Copy a checkpoint with its JSON description edited by hand (``edit(meta)``): the arrays and
    their checksum stay as they were, as after a user's edit of the ``__meta__`` entry."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("__meta__")))
    edit(meta)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as f:
        np.savez(f, **arrays, __meta__=np.array(json.dumps(meta)))


def _png(path, arr, mode=None):
    from PIL import Image
    Image.fromarray(arr, mode=mode).save(path)


def make_fixtures(root):
    """Every file the catalogue's commands refer to, in ``root`` (about 30 small files)."""
    from regnp.train import _args_record, config_from_args, parse_args, train
    root = Path(root)
    a = parse_args(TINY.split())
    cfg = dict(config_from_args(a), args=_args_record(a))       # as python -m regnp.train stores it
    run = train(cfg, 2, root / "ck", save_every=2, val_every=0, progress=False)
    assert run["steps_done"] == 2
    # Score two pairs here, so Numba's on-disk cache holds the evaluation kernels (Jacobian,
    # nearest warp, ...) before any subprocess runs: on a cold cache a Ctrl-C case could land
    # inside a first compilation, where Python drops the KeyboardInterrupt (llvmlite callback).
    from regnp.data import load_dataset
    from regnp.evaluate import evaluate_pairs
    evaluate_pairs(run["model"], load_dataset("phantom", "test", size=32, n_pairs=2), [0, 1])
    F, M = _blobs()
    np.save(root / "F.npy", F)
    np.save(root / "M.npy", M)
    np.save(root / "M40.npy", np.random.default_rng(1).random((40, 32), dtype=np.float32))
    np.save(root / "Fm.npy", (F > 0.5).astype(np.uint8))
    np.save(root / "mask40.npy", np.ones((40, 32), np.uint8))
    np.save(root / "Mm.npy", (M > 0.5).astype(np.uint8))
    np.save(root / "mask_frac.npy", (F > 0.5).astype(np.float32) * 0.5)
    np.save(root / "mask_float.npy", (F > 0.5).astype(np.float32))
    nanmask = (F > 0.5).astype(np.float64)
    nanmask[:2, :2] = np.nan
    np.save(root / "mask_nan.npy", nanmask)
    np.save(root / "mask_neg.npy", -(F > 0.5).astype(np.int32))
    np.save(root / "mask_lab2.npy", 2 * (F > 0.5).astype(np.uint8))
    np.save(root / "mask_empty.npy", np.zeros((32, 32), np.uint8))
    np.save(root / "zeros.npy", np.zeros((32, 32), np.float32))
    nan = F.copy()
    nan[0, :3] = np.nan
    np.save(root / "nan.npy", nan)
    np.save(root / "complex.npy", F.astype(np.complex64))
    np.save(root / "int16.npy", (F * 1000).astype(np.int16))
    np.save(root / "bool.npy", F > 0.5)
    np.save(root / "f16.npy", F.astype(np.float16))
    np.save(root / "vol.npy", np.stack([F, M]))
    noise = np.random.default_rng(0).random((2, 256, 256), dtype=np.float32)
    np.save(root / "small.npy", noise[0, :5, :9])
    np.save(root / "big.npy", noise[0])
    np.save(root / "big2.npy", noise[1])
    (root / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "F.tif").write_bytes(b"II*\x00")
    (root / "imgdir").mkdir()
    (root / "afile").write_text("a file, not a folder\n")
    (root / "notes.txt").write_text("not json\n")
    (root / "cmp_nopairs.json").write_text(json.dumps({"method": "other"}))
    (root / "cmp_null.json").write_text(json.dumps({"pairs": [{"dice_after": 0.8},
                                                              {"dice_after": None}]}))
    (root / "cmp_one.json").write_text(json.dumps({"pairs": [{"dice_after": 0.8}]}))
    (root / "blocked" / "warped.png").mkdir(parents=True)
    (root / "blocked" / "table.md").mkdir()
    (root / "empty_run").mkdir()
    ck = root / "ck" / "checkpoint.npz"
    (root / "corrupt").mkdir()
    data = bytearray(ck.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / "corrupt" / "checkpoint.npz").write_bytes(bytes(data))
    _edit_checkpoint(ck, root / "edited" / "checkpoint.npz",
                     lambda m: m["model_options"].update(kernel_size="5"))
    _edit_checkpoint(ck, root / "edited_data" / "checkpoint.npz",
                     lambda m: m["data"].update(size="32"))
    _edit_checkpoint(ck, root / "edited_big" / "checkpoint.npz",
                     lambda m: m["model_options"].update(kernel_size=999999))
    _edit_checkpoint(ck, root / "step_five" / "checkpoint.npz", lambda m: m.update(step="five"))
    _edit_checkpoint(ck, root / "rng_null" / "checkpoint.npz", lambda m: m.update(rng=None))
    (root / "cmpdir").mkdir()
    (root / "cmpdir" / "metrics.json").write_text(json.dumps(
        {"method": "other", "pairs": [{"dice_after": 0.8}, {"dice_after": 0.7}]}))
    (root / "it").mkdir()
    np.save(root / "it" / "warped.npy", M)
    bad_job = root / "badgrid" / "phantom_quick_steps_liver16_vm2_lam0.04_seed0"
    bad_job.mkdir(parents=True)
    (bad_job / "job.json").write_text('"hello"')
    # a CHAOS-shaped folder of 5 tiny subjects whose masks hold label 9, which CHAOS lacks
    fake = root / "fakeset" / "chaos_mr_t2_abdomen"
    (fake / "images").mkdir(parents=True)
    (fake / "masks").mkdir()
    rows = ["file,chaos_mr_subject"]
    for s in range(1, 6):
        name = f"chaos_t2_sub{s}_z1.png"
        _png(fake / "images" / name, (F * 255).astype(np.uint8))
        _png(fake / "masks" / name, ((F > 0.5) * 9).astype(np.uint8))
        rows.append(f"{name},{s}")
    (fake / "index.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("catalogue"))


# ------------------------------------------------------------------------------------------
# running one case
# ------------------------------------------------------------------------------------------
def _snapshot(folder):
    """{relative path: sha1} of every file (and '<dir>' for every folder) under ``folder``."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def _pattern(message):
    """The documented message as a regex: ``…`` matches any text."""
    return re.compile("".join(".*?" if part == "…" else re.escape(part)
                              for part in re.split("(…)", message)) + r"\Z", re.S)


def _env():
    env = dict(os.environ, MPLBACKEND="Agg", NUMBA_NUM_THREADS="1", PYTHONWARNINGS="default")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("REGNP_DATA_ROOT", None)
    return env


def _command(case, data=None):
    args = case.args.replace("{data}", str(data)) if data is not None else case.args
    return [sys.executable, "-m", f"regnp.{case.tool}", *shlex.split(args)]


def _run_interrupted(cmd, cwd, marker, timeout=120):
    """Start ``cmd``, wait until ``marker`` appears on stdout or stderr (the tool is busy), send
    SIGINT, and return (exit status, stdout, stderr)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=ctrl_c_as_in_a_terminal)
    chunks = {"out": [], "err": []}
    seen = threading.Event()

    def pump(stream, key):
        for block in iter(lambda: os.read(stream.fileno(), 4096), b""):
            chunks[key].append(block)
            if marker.encode() in b"".join(chunks[key]):
                seen.set()
    threads = [threading.Thread(target=pump, args=(proc.stdout, "out"), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, "err"), daemon=True)]
    for t in threads:
        t.start()
    try:
        assert seen.wait(timeout), f"{marker!r} never appeared: {b''.join(chunks['err'])[-2000:]}"
        time.sleep(0.3)                         # well inside the loop, not at its first line
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for t in threads:
        t.join(5)
    return (proc.returncode, b"".join(chunks["out"]).decode(errors="replace"),
            b"".join(chunks["err"]).decode(errors="replace"))


def _case_id(case):
    return f"{case.tool}: {case.what}"[:70]


# The entry point behind each ``python -m regnp.<tool>`` (what its ``__main__`` calls).
MAINS = {"train": "regnp.train", "evaluate": "regnp.evaluate", "register": "regnp.register",
         "data": "regnp.data.__main__", "study": "regnp.study.experiments",
         "bench": "regnp.bench.bench", "precompile": "regnp.precompile"}


def run_in_process(case, cwd, data=None):
    """Run a case through its tool's ``main(argv)`` in this process, in ``cwd``
    (``process_helpers.run_main``): returns (exit status, stdout, stderr). The caller's
    ``monkeypatch`` sets the environment a fresh interpreter would see."""
    import importlib
    argv = shlex.split(case.args.replace("{data}", str(data)) if data is not None else case.args)
    return run_main(importlib.import_module(MAINS[case.tool]).main, argv, cwd)


def check_case(case, code, out, err, before, after, shown):
    """The catalogue's promise for one run: one documented line, no traceback, no input
    changed, and nothing written by a refused command."""
    assert "Traceback" not in err, shown
    lines = [ln for ln in re.split(r"[\r\n]+", err) if ln.strip()]    # \r: progress bars
    pattern = _pattern(case.message)
    if case.kind == "warning":
        assert code == 0, shown
        assert any(pattern.match(ln) for ln in lines), shown
        assert not any(ln.startswith("error") for ln in lines), shown
    else:
        assert code != 0, shown
        if case.kind == "interrupt":
            assert code == 130, shown
        assert lines and pattern.match(lines[-1]), shown
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"files changed or removed: {changed}{shown}"
    if case.kind == "error" or "nothing was written" in case.message:   # refused: no new file
        new = [p for p in after if p not in before and (after[p] != "<dir>" or case.tool in MINE)]
        assert not new, f"a refused command wrote {new}{shown}"


def _prepare(case, template, tmp_path, request, monkeypatch):
    data = request.getfixturevalue("data_root") if case.data else None
    work = tmp_path / "w"
    shutil.copytree(template, work, symlinks=True)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("REGNP_DATA_ROOT", raising=False)
    return data, work


IN_PROCESS = [c for c in CASES if c.kind != "interrupt"]
SUBPROCESS = [c for c in CASES if c.kind == "interrupt"]


@pytest.mark.parametrize("case", IN_PROCESS, ids=[_case_id(c) for c in IN_PROCESS])
def test_catalogue_case(case, template, tmp_path, request, monkeypatch):
    data, work = _prepare(case, template, tmp_path, request, monkeypatch)
    before = _snapshot(work)
    code, out, err = run_in_process(case, work, data)
    shown = (f"\n$ python -m regnp.{case.tool} {case.args}\nexit {code}\nstdout:\n{out[-1500:]}"
             f"\nstderr:\n{err[-3000:]}")
    check_case(case, code, out, err, before, _snapshot(work), shown)


@pytest.mark.slow
@pytest.mark.parametrize("case", SUBPROCESS, ids=[_case_id(c) for c in SUBPROCESS])
def test_catalogue_interrupt_case(case, template, tmp_path, request, monkeypatch):
    """Ctrl-C needs a real signal in a process of its own."""
    data, work = _prepare(case, template, tmp_path, request, monkeypatch)
    before = _snapshot(work)
    cmd = _command(case, data)
    code, out, err = _run_interrupted(cmd, work, case.wait)
    shown = f"\n$ {' '.join(cmd[2:])}\nexit {code}\nstdout:\n{out[-1500:]}\nstderr:\n{err[-3000:]}"
    check_case(case, code, out, err, before, _snapshot(work), shown)


# ------------------------------------------------------------------------------------------
# docs/ERRORS.md
# ------------------------------------------------------------------------------------------
TOOLS = {
    "train": "training (`python -m regnp.train`)",
    "evaluate": "evaluation (`python -m regnp.evaluate`)",
    "register": "registering your own pair (`python -m regnp.register`)",
    "data": "looking at the data (`python -m regnp.data`)",
    "study": "the experiment grid (`python -m regnp.study`)",
    "bench": "benchmarks (`python -m regnp.bench`)",
    "precompile": "compiling the kernels ahead (`python -m regnp.precompile`)",
}

INTRO = """\
# Bad inputs and what the tools say

Every bad input below is handled by one of the command-line tools with **one line** on stderr and
a non-zero exit status — no traceback, and nothing written or changed on disk. Some inputs are
legal but probably not what was meant: those run, with one `warning:` line. Ctrl-C prints one line
and exits with status 130; SIGTERM (`kill PID`, or a batch system's stop) takes the same path,
names itself in that line and exits with status 143.

This page is generated from the table in `tests/test_error_catalogue.py`, which runs every entry
through the real command line (`python tests/test_error_catalogue.py --write` regenerates it; a
test fails when the two differ). Messages are shown exactly; `…` stands for a path or a library's
own words. The files the commands name (`F.npy`, `ck/`, `afile`, ...) are built by
`make_fixtures` in the same file: `ck` is a tiny trained run, `afile` a plain file, `blocked/` a
folder holding folders named like output files, `edited/` a checkpoint whose JSON description was
edited by hand. The `TINY` options (a 32×32 network that trains in a second) are
`{tiny}`.

Conventions behind the messages (README, "Conventions"):

- **Images** (`register`): float32/float64 `.npy` arrays and 8/16-bit PNGs are used as they are.
  Other numeric `.npy` dtypes are converted with a warning that says so: integers and booleans to
  float, float16 to float32. Complex arrays are an error (which part is the intensity?), as are
  NaN/Inf and a constant image (there is nothing to register).
- **Masks**: integer label maps, 0 = background. Booleans are labels 0/1; float masks holding whole
  numbers are converted with a warning; fractional values, NaN and negative labels are errors.
  Dice is scored per label present in the fixed mask, so an empty fixed mask has no Dice (warning)
  and a fixed label the moving mask lacks scores 0 (warning).
- **Sizes** must be divisible by 2^levels of the network; the message names the nearest valid
  sizes. `register` pads and crops back, so any size works there.
- **Outputs**: every destination is checked before anything is computed or written: a folder
  that is a file or lies under one, or an output name taken by a folder, stops the tool first.
  `data show` without `--out` writes `data_<set>_<split>.png` in the current directory, never into
  the package's tracked `figures/`.
- **Checkpoints** may be given as the `.npz` file or the run folder (`--checkpoint runs/x`); any
  other suffix is refused, never swapped for `.npz`.
- **Inputs are never replaced**: an `--out` whose outputs would overwrite one of the command's
  own inputs is refused.
- **Memory**: before allocating anything that grows with `--size` or with a checkpoint's shapes,
  the tools estimate the memory it needs and refuse (one line) above what the machine has
  available (`MemAvailable` on Linux).
- **The grid** (`python -m regnp.study`): a `metrics.json` it cannot read is moved aside
  (`metrics.json.unreadable-<time>`, with a warning) and its job runs again; a `job.json` it
  cannot read stops it. Ctrl-C stops the running jobs (they keep their checkpoints and resume on
  the next run) and starts no queued one. So does SIGTERM, which still reaches a grid started in
  the background (`… &` from a script ignores Ctrl-C): `kill PID` stops it in order.
"""


def render_markdown():
    """docs/ERRORS.md, generated from :data:`CASES`."""
    lines = [INTRO.format(tiny=TINY)]
    n = {k: 0 for k in ("error", "warning", "interrupt")}
    for tool, title in TOOLS.items():
        cases = [c for c in CASES if c.tool == tool]
        lines += [f"## {title}", "", "| # | bad input | command | message |", "|---|---|---|---|"]
        for k, c in enumerate(cases, 1):
            n[c.kind] += 1
            args = c.args.replace(TINY, "TINY").replace("{data}", "../shared/data")
            cmd = f"python -m regnp.{tool} {args}" + (" then Ctrl-C" if c.kind == "interrupt" else "")
            what = c.what + (" (needs the real data sets)" if c.data else "")
            cells = [str(k), what, f"`{cmd}`", f"`{c.message}`"]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines.append("")
    lines.append(f"{len(CASES)} entries: {n['error']} errors, {n['warning']} warnings, "
                 f"{n['interrupt']} Ctrl-C.")
    return "\n".join(lines) + "\n"


def test_errors_md_is_generated_from_the_table():
    assert DOC.is_file() and DOC.read_text() == render_markdown(), (
        "docs/ERRORS.md differs from the table in tests/test_error_catalogue.py; regenerate it "
        "with: python tests/test_error_catalogue.py --write")


def test_catalogue_covers_every_tool():
    assert len(CASES) >= 40
    assert {c.tool for c in CASES} == set(TOOLS)
    assert len({(c.tool, c.args) for c in CASES}) == len(CASES), "duplicate catalogue entries"


if __name__ == "__main__":
    if "--write" in sys.argv:
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(render_markdown())
        print(f"wrote {DOC} ({len(CASES)} entries)")
    elif "--show" in sys.argv:
        # run every case and print what the tool actually says (to fill in the table)
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            tpl = make_fixtures(Path(tmp) / "tpl")
            for case in CASES:
                work = Path(tmp) / "w"
                if work.exists():
                    shutil.rmtree(work)
                shutil.copytree(tpl, work)
                data = REPO.parent / "shared" / "data"
                t0 = time.perf_counter()
                if case.kind == "interrupt":
                    code, out, err = _run_interrupted(_command(case, data), work, case.wait)
                else:
                    code, out, err = run_in_process(case, work, data)
                lines = [ln for ln in err.splitlines() if ln.strip()]
                ok = bool(lines) and (_pattern(case.message).match(lines[-1]) or any(
                    _pattern(case.message).match(ln) for ln in lines))
                print(f"[{'ok ' if ok else 'BAD'}] {time.perf_counter() - t0:5.1f}s exit {code} "
                      f"{case.tool} {case.args}\n      {lines[-1] if lines else '(no stderr)'}"
                      + ("" if ok or "Traceback" not in err else f"\n{err[-1500:]}"), flush=True)
    else:
        print(__doc__)
