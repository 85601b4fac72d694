"""Adversarial attacks: untargeted, white-box, in pixel space on inputs in [0, 1].

``regcore.attacks.pgd`` holds FGSM and PGD (Linf and L2) as pure batched functions. The
model is in eval mode during an attack (its mode is restored after) and no gradient is
ever accumulated into its parameters.
"""
