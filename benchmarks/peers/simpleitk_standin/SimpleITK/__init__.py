"""A stand-in for SimpleITK on a lent GPU machine (``nnunet_device.sh``): nnU-Net imports
SimpleITK when it loads its readers, but uses it only to read medical image formats, never
the PNGs of ``nnunet_peer.py``; its 52 MB wheel would not fit the 64 MiB a call carries.
Anything taken from it fails loudly."""


def __getattr__(name):
    raise ImportError(
        f"SimpleITK.{name}: this is benchmarks/peers' stand-in, not SimpleITK; install "
        "SimpleITK to read other formats"
    )
