"""Volumes written by the tests themselves: NIfTI files, DICOM series, small 3D checkpoints."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import torch
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from models.checkpoint import ModelCard, save_checkpoint


def oblique_affine() -> np.ndarray:
    """A rotated, anisotropic, left-right flipped voxel-to-world affine (float32-exact values)."""
    angle = np.deg2rad(17.0)
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-0.8, 1.1, 2.5])
    affine[:3, 3] = [90.5, -120.25, -60.0]
    return affine.astype(np.float32).astype(np.float64)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None, **header) -> Path:
    """Write ``data`` (i, j, k[, c]) with ``affine`` (sform and qform, scanner)."""
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    spacing: Sequence[float] = (2.5, 0.7, 0.6),
    intercept: float = -1024.0,
    slope: float = 1.0,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    origin: Sequence[float] = (-100.0, -80.0, 30.0),
    series_uid: str | None = None,
    shuffle_seed: int | None = 0,
    name_prefix: str = "IM",
) -> Path:
    """Write ``volume`` (slices, rows, cols) of stored uint16 values as a CT series, one file a slice.

    File names are shuffled against slice order when ``shuffle_seed`` is given.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    row_dir = np.asarray(orientation[:3], dtype=float)
    col_dir = np.asarray(orientation[3:], dtype=float)
    normal = np.cross(row_dir, col_dir)
    order = list(range(volume.shape[0]))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    for file_no, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "CT"
        ds.PatientName = "Test^Volume"
        ds.InstanceNumber = file_no + 1
        position = np.asarray(origin) + normal * spacing[0] * k
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[2]:.6f}"]
        ds.SliceThickness = f"{spacing[0]:.6f}"
        ds.Rows, ds.Columns = volume.shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleSlope = f"{slope:g}"
        ds.PixelData = np.ascontiguousarray(volume[k], dtype="<u2").tobytes()
        ds.save_as(folder / f"{name_prefix}{file_no:04d}.dcm", enforce_file_format=True)
    return folder


def structured_volume(shape: Sequence[int] = (29, 23, 19), seed: int = 0) -> np.ndarray:
    """Noise around 100 with a bright box (+80) over a third of the slices and half the columns."""
    rng = np.random.default_rng(seed)
    base = rng.normal(100, 30, size=tuple(shape))
    base[shape[0] // 3 :, :, : shape[2] // 2] += 80
    return base.astype(np.int16)


def unet3d_checkpoint(path: Path, in_channels: int = 1, num_classes: int = 3, **card) -> Path:
    """A tiny 3D U-Net (width 2, depth 2, zero-padded) whose labels follow the volume.

    Hand-set weights (``tests/_varying_models.py``): brightness (scale 1/100, channels
    weighted 2:1:… so their order matters) cut between 0.9 and 1.5, i.e. the noise
    of :func:`structured_volume` splits into the lower classes and its bright box is
    the top one. Asserted here to give every class on at least 10% of that volume.
    """
    from tests._varying_models import image_following_unet, label_spread

    thresholds = np.linspace(1.0, 1.4, num_classes - 1).tolist() if num_classes > 2 else [1.2]
    weights = [float(in_channels - c) for c in range(in_channels)]
    weights = [w / sum(weights) for w in weights]
    model = image_following_unet(
        "unet3d", in_channels, thresholds, band_weights=weights, sharpness=10.0, width=2, depth=2,
        padding="same",
    )  # fmt: skip
    fields = {"normalization": {"kind": "scale", "scale": 1 / 100.0, "offset": 0.0}, "tile_size": 24}
    fields.update(card)
    sample = torch.from_numpy(structured_volume().astype(np.float32) / 100.0)
    with torch.no_grad():
        labels = model(sample.expand(1, in_channels, *sample.shape)).argmax(1).numpy()
    label_spread(labels, nodata=None).check(min_classes=num_classes, min_share=0.10)
    names = [f"label_{i}" for i in range(num_classes)]
    return save_checkpoint(
        path, model, ModelCard(arch="unet3d", config=model.config, class_names=names, **fields)
    )
