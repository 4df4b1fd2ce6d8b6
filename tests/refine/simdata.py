"""Simulated refinement inputs for the tests: a small asymmetric model, its projections at random
orientations through a known CTF plus noise (an MRC particle stack), a RELION particle STAR file naming
each particle's micrograph, and the Leginon/Appion rows those micrographs have in a real session
(session, microscope, scope state, images, a CTFFIND run and its estimates)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from appion.base.physics import calc_ctf, calc_frequency_grid

VOLTAGE_KV = 300.0
CS_MM = 2.7
AMP_CONTRAST = 0.1


@dataclass(frozen=True)
class SimulatedData:
    stack: Path
    model: Path
    star: Path  # particles with rlnMicrographName only (CTF to be found in the database)
    micrographs: list[str]  # per particle
    defocus_A: dict[str, tuple[float, float, float]]  # micrograph -> (U, V, angle)
    images: np.ndarray
    apix: float


def simulate(out: Path, n: int = 200, box: int = 32, apix: float = 4.0, per_micrograph: int = 25,
             seed: int = 3, noise: float = 1.0) -> SimulatedData:
    rng = np.random.default_rng(seed)
    z, y, x = (np.indices((box,) * 3) - box // 2).astype(float)
    scale = box / 32
    volume = np.zeros((box,) * 3)
    for centre, sigma, weight in (((0, 0, 0), 3.0, 1.0), ((4, 2, -3), 2.0, 0.8), ((-3, 5, 2), 2.5, 0.7),
                                  ((2, -6, 1), 1.5, 0.6)):
        c = np.asarray(centre) * scale
        volume += weight * np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * (sigma * scale) ** 2))
    coords = np.stack([z, y, x]).reshape(3, -1)
    k, theta = calc_frequency_grid((box, box), apix)
    micrographs, defocus = [], {}
    images = np.empty((n, box, box), np.float32)
    for i in range(n):
        name = f"sim_mic_{i // per_micrograph:03d}"
        if name not in defocus:
            du = rng.uniform(12000, 22000)
            defocus[name] = (du, du - rng.uniform(100, 600), float(rng.uniform(-80, 80)))
        micrographs.append(name)
        rotation = Rotation.random(random_state=rng).as_matrix()
        source = (rotation @ coords).reshape(3, box, box, box) + box // 2
        projection = ndimage.map_coordinates(volume, source, order=1).sum(axis=0)
        du, dv, angle = defocus[name]
        ctf = calc_ctf(k, theta, du, dv, angle, VOLTAGE_KV * 1e3, CS_MM, AMP_CONTRAST)
        image = np.real(np.fft.ifft2(np.fft.fft2(projection) * ctf))
        images[i] = image + rng.normal(scale=noise * image.std(), size=image.shape)
    out.mkdir(parents=True, exist_ok=True)
    stack, model, star = out / "sim_particles.mrcs", out / "sim_model.mrc", out / "sim_particles.star"
    for path, data in ((stack, images), (model, ndimage.gaussian_filter(volume, 1.0).astype(np.float32))):
        with mrcfile.new(path, overwrite=True) as mrc:
            mrc.set_data(data)
            mrc.voxel_size = apix
    rows = "".join(f"{i + 1:06d}@{stack.name} {m}.mrc\n" for i, m in enumerate(micrographs))
    star.write_text("\ndata_particles\n\nloop_\n_rlnImageName #1\n_rlnMicrographName #2\n" + rows)
    return SimulatedData(stack, model, star, micrographs, defocus, images, apix)


def store_session(sim: SimulatedData, session_name: str = "25jan01sim", cs_m: float | None = CS_MM * 1e-3,
                  high_tension_v: int | None = int(VOLTAGE_KV * 1e3), ctf_cs_mm: float | None = None) -> int:
    """The rows a Leginon session with a CTFFIND run would hold for the simulated micrographs; returns the
    session id.  cs_m / high_tension_v None leave the microscope's Cs / the scope's voltage unrecorded."""
    from appion.base.db import models as m

    session = m.SessionData.objects.create(name=session_name, image_path="/data/leginon/" + session_name)
    tem = m.InstrumentData.objects.create(name="SimKrios", hostname="tem", cs=cs_m)
    params = m.ApCtfFind4ParamsData.objects.create(ampcontrast=AMP_CONTRAST, cs=ctf_cs_mm, fieldsize=256)
    run = m.ApAceRunData.objects.create(name="ctffind4run1", session=session, ctffind4_params=params, hidden=False)
    for name, (du, dv, angle) in sim.defocus_A.items():
        scope = m.ScopeEMData.objects.create(session=session, tem=tem, magnification=100000, defocus=-du * 1e-10,
                                             high_tension=high_tension_v)
        image = m.AcquisitionImageData.objects.create(session=session, filename=name, label="en", scope=scope)
        m.ApCtfData.objects.create(acerun=run, image_id=image.id, cs=ctf_cs_mm, amplitude_contrast=AMP_CONTRAST,
                                   defocus1=du * 1e-10, defocus2=dv * 1e-10, angle_astigmatism=angle,
                                   cross_correlation=0.3)
    return session.id


def write_star_with_ctf(sim: SimulatedData, path: Path, version: tuple[int, ...] = (3, 1)) -> Path:
    """The particles as a RELION STAR file carrying their defocus and the optics (no database needed)."""
    import starfile

    from appion.refine.calc.formats import Optics, ParticleCtf, calc_relion_tables

    names = [f"{i + 1:06d}@{sim.stack}" for i in range(len(sim.micrographs))]
    ctf = [ParticleCtf(*sim.defocus_A[m]) for m in sim.micrographs]
    optics = Optics(sim.apix, sim.images.shape[1], VOLTAGE_KV, CS_MM, AMP_CONTRAST)
    starfile.write(calc_relion_tables(names, optics, ctf, [f"{m}.mrc" for m in sim.micrographs], version), path,
                   overwrite=True)
    return path
