import numpy as np
import pytest
import torch

from monai_mtlmad.data import head_phantoms

from helpers import train_model

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def phantoms_2d():
    return head_phantoms(8, (64, 64), seed=1)


@pytest.fixture(scope="session")
def phantoms_3d():
    return head_phantoms(2, (32, 32, 32), seed=2)


def as_input(array: np.ndarray, kind: str):
    """The same image as numpy or torch (CPU, and CUDA where available)."""
    if kind == "numpy":
        return array
    t = torch.as_tensor(array)
    return t.cuda() if kind == "cuda" else t


INPUT_KINDS = ["numpy", "torch"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="session")
def model_2d(tmp_path_factory):
    """A 2D learner (32x32, 200 steps, png preset) in a model file, and its scorer."""
    path = tmp_path_factory.mktemp("model2d") / "model.pt"
    return path, train_model(path, 2, "png", steps=200)


@pytest.fixture(scope="session")
def model_3d(tmp_path_factory):
    """A 3D learner (32^3, 80 steps, mri preset) in a model file, and its scorer."""
    path = tmp_path_factory.mktemp("model3d") / "model.pt"
    return path, train_model(path, 3, "mri", steps=80)
