"""prepRefine{Eman,Frealign,Relion,Xmipp}.py: prepare particles and a model for a refinement program.

The stack (ApStackData id, MRC stack or RELION particle STAR file) is subset (-N), band-pass
filtered and Fourier-binned into the run directory in the format the program reads, the model the
same way, and the particle metadata written with each particle's CTF when it is known
(appion.refine.particles says where it comes from):

| method        | particles                     | model          | metadata                                   |
|---------------|-------------------------------|----------------|--------------------------------------------|
| relionrecon   | particles.mrcs                | model.mrc      | particles.star (RELION 3.1+ or ≤3.0 layout) |
| emanrecon     | start.hed / start.img (IMAGIC)| threed.0a.mrc  | particles.star when the optics are known    |
| frealignrecon | particles.mrc                 | model.mrc      | params.000.par (Frealign 9) + particles.star|
| xmipprecon, xmippml3d | particles.mrcs        | model.mrc      | particles.xmd (+ maskvol.mrc)               |

particles.star (RELION 3.1 layout) also carries the optics a later job needs (runJob.py reads the
voltage, Cs and amplitude contrast of a Frealign job from it).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from appion.base.db import models as m
from appion.base.db.setup import current_config
from appion.refine import hosts, particles as P, retrieve, store
from appion.refine.calc import formats, internal
from appion.refine.programs import detect_relion_version

log = logging.getLogger("appion.jobs")

LAYOUT = {"emanrecon": ("start.hed", "threed.0a.mrc"), "frealignrecon": ("particles.mrc", "model.mrc"),
          "relionrecon": ("particles.mrcs", "model.mrc"), "xmipprecon": ("particles.mrcs", "model.mrc"),
          "xmippml3d": ("particles.mrcs", "model.mrc")}
FRATE_PAR = "params.000.par"
# Frealign 9 has no "no CTF" switch: classic Appion writes a defocus of 0.1 Å under --noctf (apFrealign.py).
NOCTF_DEFOCUS_A = 0.1


def _resolve_input(text: str, kind: str, apix: float | None) -> tuple[Path, float | None, int | None]:
    """(path, pixel size from the database or --apix, row id) for an id or a file name."""
    if text.isdigit():
        fetch = retrieve.retrieve_stack_file if kind == "stack" else retrieve.retrieve_model_file
        path, db_apix = fetch(int(text))
        return path, apix or db_apix, int(text)
    return Path(text).expanduser().resolve(), apix, None


def _session_id(args) -> int | None:
    if getattr(args, "session", None):
        s = m.SessionData.objects.filter(name=args.session).order_by("-id").first()
        if s is None:
            raise retrieve.InputError(f"session {args.session!r}: no SessionData of that name")
        return s.id
    return args.expid


def _with_ctf(parts: P.ParticleSet, args, session_id: int | None) -> P.ParticleSet:
    """The particles with their CTF (unless --noctf) and the optics filled in from the session."""
    if getattr(args, "noctf", False):
        parts = replace(parts, ctf=None)
    elif parts.ctf is None and parts.micrographs is not None:
        parts = P.retrieve_particle_ctf(parts, session_id, getattr(args, "ctfmethod", None))
    if session_id is not None and None in (parts.voltage_kV, parts.cs_mm, parts.amp_contrast):
        kv, cs, amp = P.retrieve_session_optics(session_id)
        parts = replace(parts, voltage_kV=parts.voltage_kV if parts.voltage_kV is not None else kv,
                        cs_mm=parts.cs_mm if parts.cs_mm is not None else cs,
                        amp_contrast=parts.amp_contrast if parts.amp_contrast is not None else amp)
    if parts.ctf is not None and parts.amp_contrast is None:
        raise retrieve.InputError("the particles have defocus values but no amplitude contrast "
                                  "(rlnAmplitudeContrast, the session's CTF run)")
    return parts


def _optics(parts: P.ParticleSet, apix: float, box: int, method: str, need: bool) -> formats.Optics | None:
    """The optics group of the prepared particles; None when unknown and not needed."""
    missing = [label for label, value in (("accelerating voltage (rlnVoltage / ScopeEMData 'high tension')",
                                           parts.voltage_kV),
                                          ("spherical aberration (rlnSphericalAberration / InstrumentData.cs)",
                                           parts.cs_mm)) if value is None]
    if method == "frealignrecon" and parts.amp_contrast is None:
        missing.append("amplitude contrast (rlnAmplitudeContrast / the session's CTF run)")
    if missing:
        if need:
            raise retrieve.InputError(f"{method} needs the particles' {', and '.join(missing)}: give a particle STAR "
                                      "file that has them, or the session (--expid/--sessionname) they were "
                                      "recorded in")
        return None
    return formats.Optics(pixel_size_A=apix, image_size_px=box, voltage_kV=parts.voltage_kV, cs_mm=parts.cs_mm,
                          amplitude_contrast=parts.amp_contrast)


def _relion_version(args) -> tuple[int, ...]:
    if getattr(args, "relion_version", None):
        return formats.calc_version_tuple(args.relion_version)
    return detect_relion_version() or (3, 1)


def _write_stack(parts: P.ParticleSet, path: Path, n: int, new_box: int, apix: float, args, as_imagic: bool) -> None:
    writer = store.ImagicWriter(path, n) if as_imagic else store.StackWriter(path, n, new_box, apix)
    with writer:
        for start in range(0, n, args.chunk):
            stop = min(n, start + args.chunk)
            chunk = P.read_particle_images(parts, start, stop)
            writer.write(start, internal.calc_prepared(chunk, parts.pixel_size_A, args.lowpass, args.highpass,
                                                       args.bin, ndim=2))


def _prepare_volume(path: Path, pixel: float, args, out: Path, apix: float) -> None:
    volume = internal.calc_prepared(retrieve.read_mrc_volume(path), pixel, args.lowpass, args.highpass, args.bin,
                                    ndim=3)
    store.write_mrc_atomic(out, volume, apix)


def prepare_refinement(args, method: str) -> dict:
    """Prepare and record a refinement's inputs; returns a summary (rundir, files, particles, prep_id)."""
    from appion.refine.commands import calc_checked_rundir_arg, default_rundir, use_project_database

    config = current_config()
    use_project_database(config, args.projectid)
    runname = hosts.calc_checked_runname(args.runname)

    rundir = calc_checked_rundir_arg(args.rundir, default_rundir(config, runname, args.session),
                                     retrieve.retrieve_jobs_settings(config).rundir_roots)
    if rundir.name != runname:
        raise ValueError(f"run name {runname!r} must equal the last component of the run directory {rundir}")
    models = [v for v in str(args.model).split(",") if v]
    if len(models) != 1:
        raise ValueError(f"{method} refines one model; --modelid lists {len(models)}")
    stack_path, stack_apix, stack_id = _resolve_input(args.stack, "stack", args.apix)
    model_path, model_apix, model_id = _resolve_input(models[0], "model", args.apix)
    parts = P.read_particles(stack_path, stack_apix)
    model = retrieve.read_mrc_info(model_path, model_apix, want_ndim=3)
    n_total, box = len(parts.sources), parts.box
    if abs(model.pixel_size_A - parts.pixel_size_A) > 1e-3 * parts.pixel_size_A or model.shape[0] != box:
        raise retrieve.InputError(f"model {model_path} ({model.shape[0]} px at {model.pixel_size_A:g} Å) does not "
                                  f"match stack {stack_path} ({box} px at {parts.pixel_size_A:g} Å)")
    n = internal.calc_particle_count(n_total, args.last_particle)
    parts = parts.first(n)
    session_id = _session_id(args)
    parts = _with_ctf(parts, args, session_id)
    if method == "frealignrecon" and parts.ctf is None and not args.noctf:
        raise retrieve.InputError("Frealign needs each particle's CTF: the particles have no defocus values and name "
                                  "no micrographs (give a particle STAR file with rlnMicrographName or defocus "
                                  "columns, or --noctf)")
    paramonly = getattr(args, "paramonly", False)
    bin_factor = 1 if paramonly else args.bin
    new_box = internal.calc_binned_shape((box,), bin_factor)[0]
    apix = parts.pixel_size_A * bin_factor
    optics = _optics(parts, apix, new_box, method, need=method in ("relionrecon", "frealignrecon"))
    stack_name, model_name = LAYOUT[method]
    rundir.mkdir(parents=True, exist_ok=True)
    if paramonly:  # classic --paramonly: the parameter file only, naming the stack's images as they are
        names = [f"{i + 1:06d}@{s}" for s, i in parts.sources]
        store.write_mrc_atomic(rundir / model_name, retrieve.read_mrc_volume(model.path), apix)
    else:
        _write_stack(parts, rundir / stack_name, n, new_box, apix, args, as_imagic=stack_name.endswith(".hed"))
        _prepare_volume(model.path, model.pixel_size_A, args, rundir / model_name, apix)
        names = [f"{i:06d}@{rundir / stack_name}" for i in range(1, n + 1)]
    mask_file = None
    if getattr(args, "maskVolId", None):
        mask_path, mask_apix, _ = _resolve_input(str(args.maskVolId), "model", args.apix)
        mask = retrieve.read_mrc_info(mask_path, mask_apix, want_ndim=3)
        mask_file = "maskvol.mrc"
        _prepare_volume(mask.path, mask.pixel_size_A, args, rundir / mask_file, apix)
    micrographs = list(parts.micrographs) if parts.micrographs is not None else None
    ctf = list(parts.ctf) if parts.ctf is not None else None
    particles_file, fmt = stack_name, "mrc"
    if optics is not None and method != "relionrecon":
        store.write_relion_star(rundir / "particles.star",
                                formats.calc_relion_tables(names, optics, ctf, micrographs, (3, 1)))
    if method == "relionrecon":
        version = _relion_version(args)
        particles_file, fmt = "particles.star", f"relion-{'.'.join(map(str, version[:2]))}-star"
        store.write_relion_star(rundir / particles_file, formats.calc_relion_tables(names, optics, ctf, micrographs,
                                                                                    version))
    elif method == "frealignrecon":
        par_ctf = ctf or [formats.ParticleCtf(NOCTF_DEFOCUS_A, NOCTF_DEFOCUS_A, 0.0)] * n
        store.write_text_atomic(rundir / FRATE_PAR, formats.calc_frealign_par(par_ctf))
        fmt = "frealign"
    elif method in ("xmipprecon", "xmippml3d"):
        particles_file, fmt = "particles.xmd", "xmipp-xmd"
        store.write_text_atomic(rundir / particles_file, formats.calc_xmipp_metadata(names, optics, ctf))
    elif method == "emanrecon":
        fmt = "imagic"
    if ctf is not None:
        fmt += "+ctf"
    summary = {"rundir": str(rundir), "stack": str(rundir / particles_file), "model": str(rundir / model_name),
               "apix": apix, "boxsize": new_box, "particles": n, "prep_id": None, "ctf": ctf is not None,
               "mask": str(rundir / mask_file) if mask_file else None}
    if args.commit:
        stack_row = store.store_stack_row(stack_path, parts.pixel_size_A, box, n_total) if stack_id is None else \
            m.ApStackData.objects.get(id=stack_id)
        model_row = store.store_model_row(model.path, model.pixel_size_A, box) if model_id is None else \
            m.ApInitialModelData.objects.get(id=model_id)
        prep = store.store_prepared_refinement(
            runname=runname, rundir=str(rundir), method=method, description=args.description, stack_row=stack_row,
            model_row=model_row, stack_file=particles_file, model_file=model_name, last_part=n,
            lowpass=args.lowpass, highpass=args.highpass, bin_factor=bin_factor, apix=apix, boxsize=new_box,
            fmt=fmt, session_id=session_id)
        summary["prep_id"] = prep.id
    return summary
