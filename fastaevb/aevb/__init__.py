"""AEVB application: the paper's models trained and evaluated with fastaevb's fused ops.

Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014): Algorithm 1 with the SGVB
estimators A (eq. 6, ``--estimator generic``) and B (eq. 7, ``--estimator analytic``), the
MLP encoder / decoders of Appendix C, and the importance-sampled marginal likelihood of
Appendix D. One module per job:

``data``        IDX reader, Fashion-MNIST / MNIST loading, binarization
``models``      Gaussian MLP encoder, Bernoulli and Gaussian MLP decoders (Appendix C)
``objective``   the SGVB objective through ``fastaevb.SGVBLoss`` / ``fastaevb.functional``
``checkpoint``  atomic, validated checkpoints
``train``       Algorithm 1: Adagrad, minibatches, logging, checkpoints, DDP
``evaluate``    test ELBO and importance-sampled log p(x) with standard errors
``figures``     PNGs: prior samples, reconstructions, 2-D manifold, bound vs datapoints
``cli``         the ``fastaevb`` command (``train``, ``eval``, ``sample``)
``classic``     the classic PyTorch VAE example's model and loss in plain PyTorch, for comparisons
``baseline``    a plain-PyTorch reference trainer built from ``classic``

Only fastaevb's public API is used (``fastaevb.SGVBLoss``, ``fastaevb.functional``).
"""
