from fedstack.seeding import int_seed, rng


def test_streams_are_reproducible_and_independent():
    assert rng(0, "sampling", 3).integers(1 << 30) == rng(0, "sampling", 3).integers(1 << 30)
    assert rng(0, "sampling", 3).integers(1 << 30) != rng(0, "sampling", 4).integers(1 << 30)
    assert rng(0, "sampling", 3).integers(1 << 30) != rng(0, "client", 3).integers(1 << 30)
    assert rng(0, "sampling", 3).integers(1 << 30) != rng(1, "sampling", 3).integers(1 << 30)


def test_int_seed_fits_torch():
    s = int_seed(123, "init")
    assert 0 <= s < 2**63 and s == int_seed(123, "init")
