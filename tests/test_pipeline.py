"""The run's input checks: missing weights, templates and photos fail early and say what and where."""

import numpy as np
import pytest

from configs import splatshot_sd15
from splatshot_jax.jobs import pipeline
from splatshot_jax.errors import UserInputError
from splatshot_jax.io import images as image_io


def test_missing_weights_are_all_listed(tmp_path):
  config = splatshot_sd15.get_config()
  (tmp_path / "control_v11p_sd15_openpose").mkdir()
  (tmp_path / "control_v11p_sd15_openpose" / "config.json").write_text("{}")
  with pytest.raises(pipeline.MissingInputsError) as e:
    pipeline.resolve_weights(config.sd, str(tmp_path))
  msg = str(e.value)
  for needed in (f"{config.sd.base}/model_index.json", "ip-adapter-plus-face_sd15.bin",
                 "image_encoder/config.json", "control_v11p_sd15_seg/config.json", "sd-vae-ft-mse"):
    assert needed in msg, msg
  assert "control_v11p_sd15_openpose" not in msg  # present, so not reported
  assert str(tmp_path) in msg


def test_weights_found_when_present(tmp_path):
  config = splatshot_sd15.get_config()
  sd = config.sd
  for folder, name in [(sd.base, "model_index.json"), (sd.vae, "config.json"), (sd.image_encoder, "config.json"),
                       *[(c, "config.json") for c in sd.controlnets]]:
    (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / folder / name).write_text("{}")
  (tmp_path / sd.ip_adapter).write_bytes(b"")
  paths = pipeline.resolve_weights(sd, str(tmp_path))
  assert paths.base == tmp_path / sd.base and len(paths.controlnets) == 2


def test_view_set_without_gaussians_gets_a_build_hint(tmp_path):
  config = splatshot_sd15.get_config()
  np.savez(tmp_path / "view_000.npz", K=np.eye(3))
  config.template = str(tmp_path)
  with pytest.raises(pipeline.MissingInputsError, match="build_template"):
    pipeline.load_base_template(config)


def test_photo_errors(tmp_path):
  with pytest.raises(UserInputError, match="config.photo: is empty"):
    pipeline.load_photo("")
  with pytest.raises(UserInputError, match="no such file"):
    pipeline.load_photo(str(tmp_path / "absent.jpg"))
  with pytest.raises(UserInputError, match="is a directory"):
    pipeline.load_photo(str(tmp_path))
  blank = tmp_path / "blank.png"
  image_io.save_image(blank, np.full((256, 256, 3), 0.5, np.float32))
  with pytest.raises(UserInputError, match=r"config.photo: .*blank\.png: no face found"):  # names the file
    pipeline.load_photo(str(blank))


def test_pad_template_pads_images_and_cameras():
  from splatshot_jax import templates
  t = templates.synthetic_template(num_gaussians=300, size=40, rig="own")
  p = pipeline.pad_template(t, 16)
  assert pipeline.pad_template(p, 16) is p  # already a multiple: unchanged
  assert p.renders.shape[1:3] == (48, 48) and p.heatmaps.shape[1:3] == (48, 48)
  assert (p.cameras.width, p.cameras.height) == (48, 48)
  # The centre 40x40 is the original; the principal point moved by the left/top padding (4 px).
  np.testing.assert_array_equal(np.asarray(p.renders)[:, 4:44, 4:44], np.asarray(t.renders))
  np.testing.assert_allclose(np.asarray(p.cameras.K)[:, :2, 2], np.asarray(t.cameras.K)[:, :2, 2] + 4)


def test_absent_template_folder_says_how_to_build_one(tmp_path):
  config = splatshot_sd15.get_config()
  config.template = str(tmp_path / "no-such-template")
  with pytest.raises(pipeline.MissingInputsError, match="build_template.py:333"):
    pipeline.load_base_template(config)
