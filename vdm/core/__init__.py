"""The pure math of the Gaussian diffusion, no parameters and no I/O: schedules gamma(t), Gaussian closed forms,
the 8-bit grid, the denoiser's parameterisations, the one loss and its weightings, discrete time, t sampling,
exact denoisers of Gaussian data, and latent diffusion's three-term bound.
"""
