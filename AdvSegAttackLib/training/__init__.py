"""Training: segmentation models from labelled volumes and phantoms (`supervised`), adversarially on attacked
crops (`adversarial`), and the texture attack's auto-encoders (`texture_autoencoders`). Above the attacks,
which adversarial training runs.
"""
