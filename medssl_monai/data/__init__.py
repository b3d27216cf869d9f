"""CT data: the synthetic demo collection, DICOM ingestion, HU windows, 2D slice, whole-volume and 3D patch datasets."""

from medssl_monai.data.datasets import (
    AxialSliceDataset,
    cached_dataset,
    patient_subset,
    png_slice_dataset,
    read_datalist,
)
from medssl_monai.data.downstream import (
    class_folder_datalist,
    downstream_dataset,
    medmnist_datalist,
    stratified_subset,
    stratified_subset_indices,
    table_datalist,
)
from medssl_monai.data.sampling import ResumableSampler, SeededDataset
from medssl_monai.data.views import MultiViewd, ct_augmentation
from medssl_monai.data.transforms import HU_WINDOWS, FiniteCheckd, HUWindowd, ct_loading, resolve_window
from medssl_monai.data.workers import WorkerInit, resolve_loader_priority
from medssl_monai.data.volumes import label_names, volume_dataset, volume_list, volume_patch_dataset, volume_preprocessing

__all__ = [
    "AxialSliceDataset",
    "FiniteCheckd",
    "HUWindowd",
    "MultiViewd",
    "HU_WINDOWS",
    "ResumableSampler",
    "SeededDataset",
    "cached_dataset",
    "class_folder_datalist",
    "ct_augmentation",
    "ct_loading",
    "label_names",
    "downstream_dataset",
    "medmnist_datalist",
    "patient_subset",
    "png_slice_dataset",
    "read_datalist",
    "resolve_window",
    "stratified_subset",
    "stratified_subset_indices",
    "table_datalist",
    "volume_dataset",
    "volume_list",
    "volume_patch_dataset",
    "volume_preprocessing",
    "WorkerInit",
    "resolve_loader_priority",
]
