"""Differential privacy, in one package, each part with the party it protects against:

- `stages`: the client half of DP-FedAvg, codec stages — `clip` bounds each update's L2 norm by the round's
  C; `gaussian` adds noise on the device ("local": each update carries z·C, the server is not trusted;
  "distributed": each of n clients adds z·C/√n, so only the sum that secure aggregation reveals carries
  z·C).
- `central`: the server half, `CentralDP` (a `fedstack.transform.Transform`) — the round's C sent to
  clients, noise of z·C on the sum of clipped updates ("central": a trusted server, drawing its noise from
  the operating system when deployed), the fixed denominator, adaptive clipping (Andrew et al. 2021)
  and the accountant of client-level ε.
- `accounting`: the accountants (RDP or PLD through Google's dp_accounting) for client-level DP, and the
  `RecordLevelLedger` of each DP-SGD client's own record-level ε.
- `dp_sgd`: DP-SGD (Abadi et al. 2016) inside `TorchTrainer` through Opacus — record-level privacy, each
  client's own, its release checked and booked by the round loop's filters.

Modules are imported where used (`from fedstack.dp.central import CentralDP`): this package's own import
stays free of the round loop's.
"""
