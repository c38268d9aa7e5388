"""Five-point face alignment of a synthetic face whose landmarks are placed by hand.

The iBUG 68-point layout (dlib's): 36-41 the subject's right eye (image left on a frontal photo), 42-47 the left
eye, 30 the nose tip, 48 and 54 the right and left mouth corners. The five alignment points are, in this order,
right eye centre, left eye centre, nose tip, right mouth corner, left mouth corner (insightface's ArcFace order:
its published 112x112 template lists the image-left eye first). Every other landmark is put far away, so picking
a wrong index moves a point by tens of pixels.
"""

import numpy as np

from splatshot_jax.face import align
from splatshot_jax.jobs import evaluation

# insightface's published ArcFace 5-point template for 112 x 112 crops (arcface_torch / insightface utils).
INSIGHTFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                            [41.5493, 92.3655], [70.7299, 92.2041]])


def _hand_placed(five, rng):
  """(68, 2) landmarks: each eye a ring of 6 points around its centre, nose tip and mouth corners exactly at
  their points; every other landmark (brows, jaw, the rest of nose and mouth) far off to the lower right."""
  lm = rng.uniform(300.0, 400.0, size=(68, 2))
  ring = np.stack([np.cos(np.arange(6) * np.pi / 3), np.sin(np.arange(6) * np.pi / 3)], -1)
  ring *= rng.uniform(3.0, 6.0, size=(6, 1))
  ring -= ring.mean(0)  # the ring's centroid is exactly the eye centre
  lm[36:42] = five[0] + ring
  lm[42:48] = five[1] + ring[::-1]
  lm[30], lm[48], lm[54] = five[2], five[3], five[4]
  return lm


def test_five_points_are_eye_centres_nose_tip_mouth_corners_in_order():
  rng = np.random.default_rng(0)
  five = np.array([[80.0, 100.0], [150.0, 98.0], [116.0, 140.0], [90.0, 175.0], [142.0, 176.0]])
  five += rng.normal(size=five.shape)
  lm = _hand_placed(five, rng)
  np.testing.assert_allclose(align.five_points(lm), five, atol=1e-9)
  # (5, 2) input is taken as already in this order.
  np.testing.assert_array_equal(align.five_points(five), five)


def test_arcface_crop_of_a_face_on_the_template_is_the_identity():
  """A 112 x 112 image whose hand-placed landmarks sit on insightface's template: the ArcFace input is the image
  itself. Any wrong index or order (eyes or mouth corners swapped) makes the similarity a turn or a flip."""
  assert np.allclose(evaluation.ARCFACE_TEMPLATE, INSIGHTFACE_112)
  rng = np.random.default_rng(1)
  five = INSIGHTFACE_112 + 0.5  # template pixel indices -> continuous coordinates (centres at +0.5)
  lm = _hand_placed(five, rng)
  image = rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
  got = evaluation.arcface_input(image, lm, (112, 112))
  want = ((image.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)
  np.testing.assert_allclose(got, want, atol=1.5 / 127.5)


def test_align_face_maps_the_photo_points_onto_the_target_points():
  """A photo whose five points are a known similarity of the target's: the recovered transform is that
  similarity and the residual is zero; the mapped landmarks land on the target's own five points."""
  rng = np.random.default_rng(2)
  target_five = np.array([[40.0, 50.0], [88.0, 50.0], [64.0, 78.0], [46.0, 100.0], [82.0, 100.0]])
  target = _hand_placed(target_five, rng)
  s, th, t = 1.7, np.radians(12.0), np.array([31.0, -12.0])
  A = s * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
  photo_five = (target_five - t) @ np.linalg.inv(A).T  # target = A photo + t
  photo = _hand_placed(photo_five, rng)
  image = rng.integers(0, 256, size=(200, 220, 3), dtype=np.uint8)
  al = align.align_face(image, photo, target, (128, 128))
  np.testing.assert_allclose(al.transform[:, :2], A, atol=1e-9)
  np.testing.assert_allclose(al.transform[:, 2], t, atol=1e-7)
  assert al.residual_px < 1e-7
  np.testing.assert_allclose(align.five_points(al.landmarks68), target_five, atol=1e-4)
