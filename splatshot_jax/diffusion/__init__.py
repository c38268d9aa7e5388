"""The latent-diffusion prior in Flax: SD UNet, VAE, CLIP, ControlNet, IP-Adapter, DDIM."""
