"""Building blocks shared by the three GAN frameworks (pix2pix/CUT/BCIStainer lineage).

One module per idea: ResNet generators and antialiased resampling (`resnet`),
PatchGAN discriminators (`patchgan`), Gaussian pyramids (`pyramid`), PatchNCE and
its adaptive supervised variant (`patchnce`), StyleGAN2 modulated convolutions and
SimAM (`stylemod`), GAN/focal/SSIM losses (`losses`), weight init (`init`).
Everything runs on any device (the references hard-code CUDA in places).
"""
