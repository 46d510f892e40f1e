"""World models (Ha & Schmidhuber 2018): a VAE of frames and an MDN-RNN of their latent dynamics."""
