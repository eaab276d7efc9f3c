"""`digits`: the default data set, a real TFDS data set that builds offline.

The 1,797 8x8 handwritten digits (UCI ML optical recognition data set) ship inside
scikit-learn, so `download_and_prepare()` needs no network. Pixels (0..16 in the source)
are rescaled to 0..255 so the images decode like any other TFDS image data set.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

NUM_TEST_EXAMPLES = 297  # 1,500 train / 297 test: a fixed, seeded split
SIZE = "1,797 examples"


class Digits(tfds.core.GeneratorBasedBuilder):
    """Handwritten digits 0-9 as 8x8x1 grayscale images, built from scikit-learn's copy."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="UCI ML hand-written digits (1,797 8x8 images), bundled with scikit-learn.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 1)),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the data ships with scikit-learn.
        from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        order = np.random.default_rng(0).permutation(len(images))
        test, train = order[:NUM_TEST_EXAMPLES], order[NUM_TEST_EXAMPLES:]
        return {
            "train": self._generate_examples(images[train], digits.target[train], train),
            "test": self._generate_examples(images[test], digits.target[test], test),
        }

    def _generate_examples(self, images, labels, keys):
        for image, label, key in zip(images, labels, keys):
            yield int(key), {"image": image, "label": int(label)}
