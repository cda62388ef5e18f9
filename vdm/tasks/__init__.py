"""Training: the one loop over a Task protocol (loop; it imports no model), the diffusion model's pure steps
(diffusion_model), and each trained model's Task: diffusion (diffusion_task), the noisy classifier
(classifier_task), the autoencoder (autoencoder_task) and, one floor above them, latent diffusion (latent_task).
"""
