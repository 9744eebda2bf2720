"""Builder of the tiny TFDS fixture committed in tests/data/tfds_fixture/.

Preparing a TFDS dataset needs TensorFlow (its feature encoders import it); reading it with
`tfds.data_source` does not. So the fixture is prepared once, by hand, in an environment that
has tensorflow and tensorflow-datasets:

    python -c "from tests.data.tfds_builder import prepare; prepare('tests/data/tfds_fixture')"

and the ArrayRecord files it writes are committed. The tests only read them.
"""

import numpy as np
import tensorflow_datasets as tfds

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


class VlxTinyCaptions(tfds.core.GeneratorBasedBuilder):
    """Coloured 32x32 images with captions and colour labels: 12 for train (the last with an
    empty caption, a bad sample the pipeline must skip and count), 6 for test."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(32, 32, 3)),
                    "caption": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=list(COLORS)),
                }
            )
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(12, 0), "test": self._generate_examples(6, 1)}

    def _generate_examples(self, n, seed):
        rng = np.random.default_rng(seed)
        names = list(COLORS)
        for i in range(n):
            label = i % len(names)
            image = np.clip(
                np.asarray(COLORS[names[label]]) + rng.normal(0, 10, (32, 32, 3)), 0, 255
            )
            yield (
                i,
                {
                    "image": image.astype(np.uint8),
                    "caption": ""
                    if (seed == 0 and i == n - 1)
                    else f"a {names[label]} square number {i}",
                    "label": label,
                },
            )


def prepare(data_dir: str) -> None:
    VlxTinyCaptions(data_dir=data_dir, file_format="array_record").download_and_prepare()
