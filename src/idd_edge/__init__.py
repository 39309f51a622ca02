"""idd-edge: IDD road-scene segmentation, from raw polygons to Hailo HEFs on a Raspberry Pi."""

__version__ = "0.1.0"
