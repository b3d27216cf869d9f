"""Draw a preview of a demo collection: pre-training slices, both COVID-like classes, every organ class.

Usage: python scripts/preview_demo.py --data data/demo --out docs/images/demo_data.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from medssl_monai.data import class_folder_datalist, read_datalist, resolve_window  # noqa: E402
from medssl_monai.data.demo import COVID_CLASSES, ORGAN_CLASSES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    lo, hi = resolve_window("lung")
    fig, axes = plt.subplots(3, 11, figsize=(22, 6.6))
    for ax in axes.ravel():
        ax.axis("off")
    volumes = read_datalist(args.data / "datalist.json")[:3]
    for i, entry in enumerate(volumes):  # rows are Y (posterior down), columns X (patient left on the right)
        data = nib.load(entry["image"]).get_fdata()
        for j, frac in enumerate((0.2, 0.5, 0.8)):
            ax = axes[0, 3 * i + j]
            ax.imshow(data[:, :, int(frac * (data.shape[2] - 1))].T, cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(f"{Path(entry['image']).name.split('.')[0]} z={frac:.0%}", fontsize=8)
    train = class_folder_datalist(args.data / "covid_ct", "train", classes=COVID_CLASSES)
    for j, label in enumerate((0, 0, 0, 1, 1, 1)):
        sample = [s for s in train if s["label"] == label][j % 3]
        hu = np.asarray(Image.open(sample["image"])).astype(np.float32) - 1024
        axes[1, j].imshow(hu, cmap="gray", vmin=lo, vmax=hi)
        axes[1, j].set_title(f"covid_ct: {COVID_CLASSES[label]}", fontsize=8)
    organ = np.load(args.data / "organ_mnist.npz")
    images, labels = organ["train_images"], organ["train_labels"].ravel()
    for c, name in enumerate(ORGAN_CLASSES):
        axes[2, c].imshow(images[np.nonzero(labels == c)[0][0]], cmap="gray", vmin=0, vmax=255)
        axes[2, c].set_title(f"organ: {name}", fontsize=8)
    fig.suptitle("medssl-monai demo data (lung window; organ patches in their -1000..1000 HU window)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=60)
    print(f"preview written to {args.out}")


if __name__ == "__main__":
    main()
