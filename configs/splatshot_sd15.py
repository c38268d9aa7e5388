"""SplatShot with Stable Diffusion 1.5 (+ openpose/seg ControlNets, IP-Adapter-Plus-Face): photo -> 3DGS avatar.

  python -m experiments.run --config=configs/splatshot_sd15.py --config.photo=photo.jpg --config.weights=DIR
  python -m experiments.run --config=configs/splatshot_sd15.py:smoke     # install check: tiny random weights, CPU

Defaults are the paper's (official code, `../shared/reference/splatshot-official.md`): 48 template views, 25 DDIM
steps at strength 0.5 (13 denoising steps), CFG 4.0, ControlNet scales openpose 0.2 / seg 0.6, IP-Adapter 0.8,
SDI omega 0.5, feedback every step with weight 5e4, refit 1000 iterations at the first step and 500 later, seed 42.
`smoke` is the same pipeline shrunk to run on a CPU in about a minute; its avatar is not meant to look like anyone.
"""

import ml_collections


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.job = "splatshot"
  config.compilation_cache = "auto"  # persistent XLA cache (splatshot_jax/device/compile_cache.py); "" = off
  config.seed = 42

  # Inputs. A template is a folder of view_NNN.npz (padded render, control maps, viewmat, K) + its Gaussians.
  config.photo = ""
  config.weights = ""  # folder with the diffusers-format SD-1.5, VAE, ControlNets, IP-Adapter and image encoder
  # Built from the shared 333 views by `python -m experiments.run --config=configs/build_template.py:333
  # --config.data=../shared/data/multiview/nersemble-333-48views --config.out_dir=templates/nersemble-333-48views`.
  config.template = "templates/nersemble-333-48views"
  # Several comma-separated template folders: the closest to the photo is chosen (skin colour, face shape).
  config.template_override = ""  # a template name used regardless of the choice
  config.num_views = 48  # views 0-15 real NeRSemble cameras (8 frontal), 16-47 interpolated
  config.out_dir = "outputs/splatshot"
  config.overwrite = False  # replace a finished run in out_dir (else refused up front)

  # The prior.
  config.sd = ml_collections.ConfigDict()
  config.sd.prompt = "high quality portrait, detailed face, photorealistic"
  config.sd.negative_prompt = "blurry, low quality, distorted, deformed"
  config.sd.guidance_scale = 4.0  # CFG
  config.sd.controlnet_scales = (0.2, 0.6)  # (openpose landmark heatmap, face-parsing seg)
  config.sd.ip_adapter_scale = 0.8
  config.sd.dtype = "bfloat16"  # official: fp16 on an A100
  # Checkpoints, relative to config.weights (or absolute); see splatshot_jax/jobs/pipeline.py.
  config.sd.base = "stable-diffusion-v1-5"
  config.sd.vae = "sd-vae-ft-mse"  # "" = the pipeline's own VAE
  config.sd.controlnets = ("control_v11p_sd15_openpose", "control_v11p_sd15_seg")
  config.sd.ip_adapter = "IP-Adapter/models/ip-adapter-plus-face_sd15.bin"
  config.sd.image_encoder = "IP-Adapter/models/image_encoder"
  config.sd.view_chunk = 8  # views per UNet call (memory/speed trade-off, no effect on results)
  config.sd.decode_chunk = 4  # views per VAE decode / decode-VJP call

  # The sampler (splatshot_jax.sampler.SamplerConfig).
  config.sampler = ml_collections.ConfigDict()
  config.sampler.num_inference_steps = 25
  config.sampler.strength = 0.5
  config.sampler.start = "official"  # timesteps[int(25 * 0.5):] = 13 steps from t = 481; "diffusers": 12 from 441
  config.sampler.thumbnail = 128  # per-step x0 images kept for the x0 grid (longest side, px)

  # The step (splatshot_jax.guidance.GuidanceConfig).
  config.guidance = ml_collections.ConfigDict()
  config.guidance.feedback = True
  config.guidance.guidance_weight = 5e4
  config.guidance.sdi = True
  config.guidance.sdi_omega = 0.5
  config.guidance.confidence_temperature = 10.0
  config.guidance.refit_iters_first = 1000
  config.guidance.refit_iters = 500
  config.guidance.lambda_dssim = 0.2
  config.guidance.self_recurrence = 1

  # The refit (splatshot_jax.fit.FitConfig; num_iters comes from guidance).
  config.refit = ml_collections.ConfigDict()
  config.refit.lr_means = 1.6e-4
  config.refit.lr_scales = 5e-3
  config.refit.lr_quats = 1e-3
  config.refit.lr_opacities = 5e-2
  config.refit.lr_sh0 = 2.5e-3
  config.refit.lr_shN = 2.5e-3 / 20
  config.refit.background = (0.0, 0.0, 0.0)  # official: black
  # Rasterizer compositor of the refit and renders: "auto" (Triton kernels on a CUDA GPU when
  # jax-triton imports, XLA otherwise), "xla", "triton" (render/composite_triton.py).
  config.refit.backend = "auto"
  config.refit.views_per_iter = 1  # B views per refit iteration (paper: 1); see configs/refit_batching.py
  config.refit.lr_batch_scaling = "none"  # "sqrt": every refit LR x sqrt(B) (gsplat)
  config.refit.equal_views_seen = False  # refit lengths / B, so a run sees as many views as with B = 1

  # Devices: the views axis of a jax.sharding.Mesh (splatshot_jax/device/sharding.py); -1 = all local devices.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.views = -1

  # config.template = "synthetic": the project's own head (install check; no data needed).
  config.synthetic = ml_collections.ConfigDict()
  config.synthetic.num_gaussians = 3000
  config.synthetic.size = 128
  config.synthetic.rig = "paper48"  # 16 cameras + 32 interpolated, like the paper's 48 views

  # Outputs.
  config.outputs = ml_collections.ConfigDict()
  config.outputs.turntable_frames = 60
  config.outputs.turntable_fps = 30
  config.outputs.x0_grid = True

  if arg == "smoke":
    # Same pipeline, tiny: random-weight SD-shaped denoiser, a template the project builds itself.
    config.weights = "random-tiny"
    config.template = "synthetic"
    config.num_views = 4
    config.synthetic.num_gaussians = 1500
    config.synthetic.size = 64
    config.synthetic.rig = "own"
    config.out_dir = "outputs/smoke"
    config.sd.dtype = "float32"
    config.sd.view_chunk = 4
    config.sd.decode_chunk = 4
    config.sampler.num_inference_steps = 6
    config.sampler.thumbnail = 64
    config.guidance.refit_iters_first = 10  # same length every step: the step compiles once
    config.guidance.refit_iters = 10
    config.outputs.turntable_frames = 8
    config.overwrite = True  # the install check is rerun into the same folder
  elif arg not in (None, ""):
    raise ValueError(f"configs/splatshot_sd15.py: unknown arg {arg!r}; expected '' or 'smoke'")
  return config
