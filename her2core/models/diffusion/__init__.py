"""Building blocks shared by BBDM, DDIB and the consistency model.

- `unet`: the ADM/openai UNet as a diffusers `UNet2DModel` (exact reference counts and outputs),
- `bridge`: Brownian-bridge schedule, loss targets and sampler (BBDM),
- `ddim`: guided-diffusion schedule, respacing, DDIM encode/decode (DDIB),
- `karras`: EDM preconditioning with the consistency boundary condition, CT schedules, samplers,
- `common`: seeded noise, EMA shadows, resize to the model size and back, chunked/padded evaluation
  (no precision of its own: the caller's autocast applies),
- `lpips_loss`: the consistency-training LPIPS (VGG-16, average pooling) from local weights only.
"""
