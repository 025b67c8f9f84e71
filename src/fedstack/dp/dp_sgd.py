"""DP-SGD for TorchTrainer: per-example gradients and the private optimizer, through Opacus.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy", CCS'16) through Opacus
(Yousefpour et al. 2021, "Opacus: User-Friendly Differential Privacy Library in PyTorch"). The
trainer's `fit` calls these steps when `FitConfig.dp_sgd` is set; `TorchTrainer` says where the
noise comes from (`dp_seeded_noise`, `dp_secure_mode`).
"""

from __future__ import annotations

import contextlib
import math
import secrets
import warnings

from ..seeding import int_seed

# What Opacus's GradSampleModule and DPOptimizer leave on parameters and modules during a fit.
_OPACUS_PARAM_ATTRS = ("grad_sample", "_forward_counter", "_current_grad_sample", "_norm_sample", "summed_grad")
_OPACUS_MODULE_ATTRS = ("activations", "max_batch_len")


class DPSGDSteps:
    """The DP-SGD half of TorchTrainer (which holds `model`, `torch`, `_grad_sampler`, `dp_seeded_noise`
    and `dp_secure_mode`)."""

    def _fit_dp_check(self, config) -> None:
        """A ValueError for a DP-SGD config or model this trainer cannot train privately."""
        z, c = config.dp_noise_multiplier, config.dp_max_grad_norm
        if not (z >= 0 and math.isfinite(z)):
            raise ValueError(f"dp_noise_multiplier must be finite and non-negative, not {z}")
        if not (c > 0 and math.isfinite(c)):
            raise ValueError(f"dp_max_grad_norm must be positive and finite, not {c}")
        if config.batch_size < 1:
            raise ValueError(f"DP-SGD needs batch_size >= 1, not {config.batch_size}")
        if config.scaffold:
            # cᵢ⁺ would be a function of the private update only, but the pairing is untested: refuse.
            raise ValueError("DP-SGD (client.dp_sgd) cannot be combined with SCAFFOLD")
        recurrent = [type(m).__name__ for m in self.model.modules() if isinstance(m, self.torch.nn.RNNBase)]
        if recurrent:
            # Opacus computes per-example gradients of recurrent layers only for its own DPLSTM/DPGRU/DPRNN.
            raise ValueError(f"DP-SGD cannot compute per-example gradients of torch's {', '.join(recurrent)} "
                             f"(Opacus needs opacus.layers.DPLSTM and friends)")

    @contextlib.contextmanager
    def _per_example_gradients(self):
        """Opacus's per-example gradient hooks on the model for one DP-SGD fit, removed on exit.

        Opacus's GradSampleModule (Yousefpour et al. 2021) records each layer's input in the
        forward pass and, in the backward pass, turns it and the gradient w.r.t. the layer's output
        into `p.grad_sample` [batch, *p.shape]: the gradient of each example's own loss. The hooks
        only read the parameters, so parameters that are views into `_flat` work as any other.
        The wrapper is made once (it validates the model) and its hooks re-attached for each DP-SGD
        fit; they come off afterwards, with every attribute they leave on parameters and modules,
        so non-DP fits and traced evaluation see the plain model and no fit sees another's state.
        """
        from ..extras import require

        GradSampleModule = require("opacus", "privacy", "DP-SGD (client.dp_sgd)").GradSampleModule

        try:
            # loss_reduction="sum": the loss is a sum of per-example losses, so grad_sample needs no rescaling.
            if self._grad_sampler is None:
                self._grad_sampler = GradSampleModule(self.model, batch_first=True, loss_reduction="sum",
                                                      strict=True)
            else:
                self._grad_sampler.add_hooks(loss_reduction="sum", batch_first=True)
                for p in self.model.parameters():  # as GradSampleModule's constructor leaves them
                    p.grad_sample, p._forward_counter = None, 0
            with warnings.catch_warnings():
                # The first layer's input needs no gradient; Opacus's hook still gets what it needs.
                warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
                yield
        finally:
            if self._grad_sampler is not None:
                self._grad_sampler.remove_hooks()
            for p in self.model.parameters():
                p.grad = None
                for attr in _OPACUS_PARAM_ATTRS:  # plain attributes Opacus set on the tensor
                    vars(p).pop(attr, None)
            for m in self.model.modules():
                for attr in _OPACUS_MODULE_ATTRS:
                    vars(m).pop(attr, None)

    def _dp_optimizer(self, optimizer, config):
        """Opacus's DPOptimizer around `optimizer`: clip each example's gradient, sum, add noise, average.

        Its `pre_step()` turns the `grad_sample` of every parameter into `p.grad` = (Σᵢ gᵢ·min(1,
        C / (‖gᵢ‖ + 10⁻⁶)) + N(0, z²C² I)) / batch_size, dividing by the fixed `config.batch_size`
        (not the batch's actual size, which would depend on the data, as the last batch of an epoch
        may be smaller); the wrapped optimizer's `step()` then applies it.
        """
        from ..extras import require

        DPOptimizer = require("opacus.optimizers", "privacy", "DP-SGD (client.dp_sgd)").DPOptimizer

        if self.dp_secure_mode:
            try:
                import torchcsprng
            except ImportError as e:  # as Opacus's PrivacyEngine(secure_mode=True) does
                raise ImportError("dp_secure_mode needs the torchcsprng package (https://github.com/pytorch/csprng)"
                                  ) from e
            generator = torchcsprng.create_random_device_generator("/dev/urandom")
        elif self.dp_seeded_noise:
            # Derived from the fit's seed (which also orders its batches) in a stream of its own:
            # the same FitConfig draws the same noise on every engine.
            generator = self.torch.Generator().manual_seed(int_seed(config.seed, "noise"))
        else:
            generator = self.torch.Generator().manual_seed(secrets.randbits(63))  # fresh OS entropy
        # loss_reduction="mean": divide the noisy sum by expected_batch_size (grad_sample itself is
        # of the summed loss, see _per_example_gradients).
        return DPOptimizer(optimizer, noise_multiplier=config.dp_noise_multiplier,
                           max_grad_norm=config.dp_max_grad_norm, expected_batch_size=config.batch_size,
                           loss_reduction="mean", generator=generator, secure_mode=self.dp_secure_mode)
