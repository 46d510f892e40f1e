"""Vision and generative models: autoencoders (plain, denoising, masked) and variational
autoencoders (Gaussian with a pluggable prior, beta-VAE, categorical with Gumbel-softmax).

Each model lives in its own module and reads top to bottom like its paper; :mod:`.spec`
holds the configs and the ``toolkit.models`` entry points and imports no torch.
"""
