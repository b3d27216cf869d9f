"""The shared trainer: a loss that falls, checkpoints written atomically, and resume equivalence."""

from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from torch.utils.data import DataLoader

from monai.transforms import Compose, RandFlipd, RandTorchVisiond

from medssl_monai.data import AxialSliceDataset, MultiViewd, ResumableSampler, ct_augmentation
from medssl_monai.checkpoints import latest_checkpoint, load_checkpoint
from medssl_monai.engines import SelfSupervisedTrainer
from medssl_monai.handlers import CheckpointWriter, IterationSchedule, ResumeFromCheckpoint
from medssl_monai.optimizers import build_optimizer
from medssl_monai.networks import BYOL, MoCo, SparK, SwAV
from medssl_monai.utils import channels_last_format, place

DATA = [{"image": torch.rand(1, 64, 64)} for _ in range(8)]


def _spark():
    return SparK("resnet18", image_size=64, mask_ratio=0.5, decoder_width=32)


def _trainer(ckpt_dir, max_epochs, seed, resume=True, loader=None, interval=2, kill_after=None, model=_spark,
             image_key="image"):
    torch.manual_seed(seed)
    model = model()
    opt = build_optimizer(model, "lamb", lr=1e-3)
    loader = loader or DataLoader(DATA, batch_size=4, shuffle=True)
    losses = []
    trainer = SelfSupervisedTrainer("cpu", max_epochs, loader, model, opt, image_key=image_key,
                                    schedule=IterationSchedule(opt, max_epochs * len(loader), 1e-3, 2))
    save = {"network": model, "optimizer": opt, "trainer": trainer, "scaler": trainer.grad_scaler, "rng": trainer.rng}
    ResumeFromCheckpoint(ckpt_dir, save, enabled=resume).attach(trainer)
    CheckpointWriter(ckpt_dir, save, interval=interval).attach(trainer)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    if kill_after:  # stop as a killed job would, after the checkpoint of that iteration
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=kill_after), lambda e: e.terminate())
    return trainer, losses


def test_resume_continues_the_loss_curve(tmp_path):
    full, full_losses = _trainer(tmp_path / "a", max_epochs=4, seed=0)
    full.run()
    assert len(full_losses) == 8 and min(full_losses) > 0
    first, _ = _trainer(tmp_path / "b", max_epochs=4, seed=0, kill_after=4)
    first.run()
    assert latest_checkpoint(tmp_path / "b").name == "checkpoint_4.pt"
    resumed, resumed_losses = _trainer(tmp_path / "b", max_epochs=4, seed=123)  # other init: all state must load
    resumed.run()
    assert resumed.state.iteration == 8 and len(resumed_losses) == 4
    assert resumed_losses == pytest.approx(full_losses[4:], rel=1e-5, abs=1e-6)


def _augmenting_loader(demo_dir):
    """Slices with random crops and flips, from 2 persistent workers, through the resumable sampler."""
    transform = Compose([RandTorchVisiond("image", "RandomResizedCrop", size=64, scale=(0.5, 1.0)),
                         RandFlipd("image", prob=0.5, spatial_axis=0)])
    dataset = AxialSliceDataset(demo_dir / "datalist.json", transform=transform)  # 16 training slices
    return DataLoader(dataset, batch_size=4, sampler=ResumableSampler(dataset, seed=5), drop_last=True,
                      num_workers=2, persistent_workers=True, generator=torch.Generator().manual_seed(5))


def test_resume_mid_epoch_sees_the_same_batches_and_losses(tmp_path, demo_dir):
    full, full_losses = _trainer(tmp_path / "a", 2, seed=0, loader=_augmenting_loader(demo_dir), interval=3)
    batches = []
    full.add_event_handler(Events.ITERATION_COMPLETED, lambda e: batches.append(e.state.output["images"].clone()))
    full.run()
    assert len(full_losses) == 8 and min(full_losses) > 0  # 4 iterations per epoch

    killed, _ = _trainer(tmp_path / "b", 2, seed=0, loader=_augmenting_loader(demo_dir), interval=3, kill_after=6)
    killed.run()
    assert latest_checkpoint(tmp_path / "b").name == "checkpoint_6.pt"

    resumed, resumed_losses = _trainer(tmp_path / "b", 2, seed=9, loader=_augmenting_loader(demo_dir), interval=3)
    seen = []
    resumed.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.output["images"].clone()))
    resumed.run()
    assert resumed.state.iteration == 8 and len(seen) == 2
    for got, expected in zip(seen, batches[6:]):
        assert torch.equal(got, expected)  # same slices, same crops and flips, despite new worker processes
    assert resumed_losses == pytest.approx(full_losses[6:], rel=1e-5, abs=1e-6)


METHODS = {
    "moco": (lambda: MoCo("resnet18", hidden_dim=32, out_dim=8, queue_size=12, momentum=0.9), [2]),
    "byol": (lambda: BYOL("resnet18", hidden_dim=32, out_dim=8, total_iterations=8), [2]),
    "swav": (lambda: SwAV("resnet18", hidden_dim=32, out_dim=8, num_prototypes=6, freeze_prototypes_iterations=5,
                          queue_length=8), [2, 2]),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_joint_embedding_methods_resume_mid_epoch_exactly(method, tmp_path, demo_dir):
    """Queues, momentum encoders, prototypes and the EMA/freeze position all come back from the checkpoint."""
    factory, counts = METHODS[method]
    views = MultiViewd("image", [ct_augmentation(64, noise_std=0.02), ct_augmentation(32, (0.1, 0.33))][:len(counts)],
                       counts)
    dataset = AxialSliceDataset(demo_dir / "datalist.json", transform=Compose([views]))

    def loader():
        return DataLoader(dataset, batch_size=4, sampler=ResumableSampler(dataset, seed=3), drop_last=True,
                          generator=torch.Generator().manual_seed(3))

    run = {"model": factory, "image_key": "views", "interval": 3}
    full, full_losses = _trainer(tmp_path / "a", 2, seed=0, loader=loader(), **run)
    full.run()
    _trainer(tmp_path / "b", 2, seed=0, loader=loader(), kill_after=6, **run)[0].run()
    resumed, resumed_losses = _trainer(tmp_path / "b", 2, seed=1, loader=loader(), **run)
    resumed.run()
    assert resumed_losses == pytest.approx(full_losses[6:], rel=1e-5, abs=1e-6)
    final, expected = resumed.network.state_dict(), full.network.state_dict()
    for name in ("step", "queue", "queue_ptr", "momentum_head.0.weight", "target_projector.0.weight"):
        if name in expected:
            assert torch.allclose(final[name].float(), expected[name].float(), atol=1e-5), name


def test_sampler_shards_pads_and_skips():
    data = range(10)
    shards = [list(ResumableSampler(data, seed=1, num_replicas=3, rank=r)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    assert {i for s in shards for i, _ in s} == set(range(10))  # padded to 12 by repeating samples
    sampler = ResumableSampler(data, seed=1)
    epoch1 = list(sampler)
    assert list(sampler) == epoch1  # a function of (seed, epoch) only
    sampler.set_epoch(2)
    epoch2 = list(sampler)
    assert sorted(i for i, _ in epoch2) == list(range(10)) and epoch2 != epoch1
    sampler.skip(3)
    assert list(sampler) == epoch2[3:]
    assert list(sampler) == epoch2  # skipping is once
    with pytest.raises(ValueError, match="rank 3 is outside"):
        ResumableSampler(data, num_replicas=3, rank=3)


def test_checkpoints_load_weights_only_and_bad_files_fail_clearly(tmp_path):
    trainer, _ = _trainer(tmp_path, max_epochs=1, seed=0)
    trainer.run()
    ckpt = load_checkpoint(latest_checkpoint(tmp_path))  # weights_only=True by default
    assert {"network", "optimizer", "trainer", "scaler", "rng"} <= set(ckpt)
    assert not list(tmp_path.glob("*.tmp*"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"network": {}}, tmp_path / "checkpoint_99.pt")
    other, _ = _trainer(tmp_path, max_epochs=1, seed=0)
    with pytest.raises(ValueError, match="not a training checkpoint of this method, missing optimizer"):
        other.run()


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    trainer, _ = _trainer(tmp_path, max_epochs=1, seed=0, resume=False)
    DATA[0]["image"][0, 0, 0] = float("nan")
    try:
        with pytest.raises(FloatingPointError, match="loss is nan at iteration"):
            trainer.run()
    finally:
        DATA[0]["image"][0, 0, 0] = 0.5


class _Pickled:
    pass


def test_untrusted_pickle_needs_the_explicit_switch(tmp_path):
    torch.save({"obj": _Pickled()}, tmp_path / "full.pt")
    with pytest.raises(ValueError, match="full.pt: holds Python objects .* trust_checkpoint=True"):
        load_checkpoint(tmp_path / "full.pt")
    assert isinstance(load_checkpoint(tmp_path / "full.pt", trust_checkpoint=True)["obj"], _Pickled)


def test_amp_on_cpu_runs_in_bfloat16(tmp_path, recwarn):
    trainer, losses = _trainer(tmp_path, max_epochs=1, seed=0, resume=False)
    trainer.amp = True
    seen = []
    trainer.network.decoder.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    trainer.run()
    assert not [w for w in recwarn if "GradScaler" in str(w.message)]  # no CUDA scaler made on a CPU
    assert seen and all(dtype == torch.bfloat16 for dtype in seen)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert not trainer.grad_scaler.is_enabled()  # bf16 needs no loss scaling


def test_amp_auto_is_on_where_the_cpu_has_bf16_arithmetic(caplog):
    """``amp: auto`` (the pre-training bundles' default) follows the CPU's flags, read here independently;
    the trainer logs what it chose. Words from the command line are read as booleans; others are refused."""
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else set()
    native = bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    model = _spark()
    opt = build_optimizer(model, "lamb", lr=1e-3)
    with caplog.at_level("INFO"):
        trainer = SelfSupervisedTrainer("cpu", 1, DATA, model, opt, amp="auto")
    assert trainer.amp is native
    assert f"mixed precision (amp auto): {'bfloat16 autocast' if native else 'off, fp32'}" in caplog.text
    assert SelfSupervisedTrainer("cpu", 1, DATA, model, opt, amp="false").amp is False
    assert SelfSupervisedTrainer("cpu", 1, DATA, model, opt, amp="true").amp is True
    with pytest.raises(ValueError, match="amp must be true, false or auto, got 'sometimes'"):
        SelfSupervisedTrainer("cpu", 1, DATA, model, opt, amp="sometimes")


def _moco_losses(**levers) -> tuple[list[float], MoCo, SelfSupervisedTrainer]:
    """Three steps of a tiny MoCo v2 (queue, momentum encoder, shuffled keys) with the trainer's speed ids."""
    torch.manual_seed(0)
    model = MoCo("resnet18", hidden_dim=32, out_dim=8, queue_size=12)
    place(model, "cpu", channels_last=levers.get("channels_last", False))
    opt = build_optimizer(model, "sgd", lr=0.01, foreach=levers.get("foreach"))
    g = torch.Generator().manual_seed(1)
    batches = [{"image": [torch.rand(4, 1, 32, 32, generator=g), torch.rand(4, 1, 32, 32, generator=g)]}
               for _ in range(3)]
    trainer = SelfSupervisedTrainer("cpu", 1, batches, model, opt, **levers)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    trainer.run()
    return losses, model, trainer


@pytest.mark.parametrize("levers", [{"channels_last": True, "foreach": True}, {"compile": "aot_eager"}])
def test_speed_levers_train_the_same_method(levers):
    """channels_last (weights and inputs), foreach optimiser and clipping kernels, and torch.compile (here the
    aot_eager backend: graph capture and AOTAutograd without inductor's C++ build) give the default step's
    losses and leave the checkpointed module, its keys and its queue, as they are."""
    expected, reference, _ = _moco_losses()
    losses, model, trainer = _moco_losses(**levers)
    # the lever is in use: the step calls the compiled module, or clips with the multi-tensor kernels
    assert (trainer.run_network is not model) == ("compile" in levers)
    assert trainer.foreach is levers.get("foreach")
    assert losses == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert model.state_dict().keys() == reference.state_dict().keys()
    assert torch.allclose(model.queue, reference.queue, atol=1e-4)
    if levers.get("channels_last"):
        weight = model.backbone.layer1[0].conv1.weight  # (64, 64, 3, 3): a layout that shows
        assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def test_place_puts_3d_weights_channels_last_3d():
    from monai.networks.nets import resnet18

    net = place(resnet18(spatial_dims=3, n_input_channels=1), "cpu", channels_last=True)
    weights = [p for p in net.parameters() if p.ndim == 5]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in weights)
    assert channels_last_format(5) == torch.channels_last_3d and channels_last_format(2) == torch.contiguous_format
