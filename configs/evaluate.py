"""Evaluating avatars: identity over a yaw sweep, multi-view consistency, the official turntables; a report.

  python -m experiments.run --config=configs/evaluate.py --config.target=OUT           # batch: + report.html
  python -m experiments.run --config=configs/evaluate.py --config.target=OUT/00000     # one avatar folder
  python -m experiments.run --config=configs/evaluate.py --config.target=OUT --config.arcface=w600k_r50.onnx
  python -m experiments.run --config=configs/evaluate.py:paper --config.target=OUT --config.insightface=MODELS \
      --config.fid_weights=pt_inception-2015-12-05-6726825d.pth --config.ffhq=FFHQ_DIR \
      --config.clip_iqa=clip_iqa_image.onnx --config.clip_iqa_text=clip_iqa_text.npy   # + the paper's table

See splatshot_jax/jobs/evaluation.py for the metrics, splatshot_jax/jobs/paper_metrics.py for the paper's protocol
(`paper`, or --config.protocol=paper: CSIM, CV-CSIM, FID, KID, CLIP-IQA, AKD on views 005/006/008/011 of a batch).
`smoke` samples the official videos sparsely (tests, CPU).
"""

import ml_collections


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.job = "evaluate"
  config.target = ""  # an avatar folder (one run's outputs) or a batch folder (configs/batch.py's out_dir)
  config.arcface = ""  # local ONNX file of insightface's ArcFace recognition model; "" = dlib only

  # Identity on a yaw sweep in the template's rig frame (yaw 0 = its frontal view).
  config.yaws = tuple(float(y) for y in range(-90, 91, 15))
  config.max_yaw = 30.0  # the headline identity is the mean over |yaw| <= max_yaw
  config.side_yaw = 60.0  # the report's two side views

  # Official turntables: <official_videos>/<photo stem>.mp4 when it exists ("" = none).
  config.official_videos = "../shared/data/photos/celeba-hq/videos"
  config.video_stride = 5  # every 5th of the 150 frames

  config.alpha_threshold = 0.9  # reprojection: pixels where both alphas are above this
  config.render_chunk = 4  # views per render call (memory; one compile for all chunks)
  config.thumbnail = 192  # longest side of the report's images (px)
  config.gif_frames = 24

  # The paper's protocol (splatshot_jax/jobs/paper_metrics.py), beside ours: "ours" or "paper". Your files only.
  config.protocol = "ours"
  config.insightface = ""  # a folder with insightface's buffalo_l pack (det_10g.onnx, w600k_r50.onnx): CSIM, CV-CSIM
  config.det_size = 640  # SCRFD input (insightface's FaceAnalysis.prepare(det_size=(640, 640)))
  config.fid_weights = ""  # pt_inception-2015-12-05-6726825d.pth (torchmetrics' FID Inception; [paper] extra) or .onnx
  config.ffhq = ""  # FFHQ-1024 image folder: the FID / KID reference
  config.ffhq_subset = 5000  # drawn with random.seed(42) from the sorted file list
  config.kid_subsets = 100
  config.kid_subset_size = 1000
  config.clip_iqa = ""  # ONNX CLIP image encoder: (N, 3, 224, 224) RGB in [0, 1] -> (N, D)
  config.clip_iqa_text = ""  # .npy (2, D): its text embeddings of "Good photo." and "Bad photo."

  if arg == "smoke":
    config.video_stride = 50  # 3 frames per video
    config.yaws = (-90.0, -30.0, 0.0, 30.0, 90.0)
    config.thumbnail = 96
    config.gif_frames = 8
  elif arg == "paper":
    config.protocol = "paper"
  elif arg not in (None, ""):
    raise ValueError(f"configs/evaluate.py: unknown arg {arg!r}; expected '', 'smoke' or 'paper'")
  return config
