"""Encoders: timm backbones (``timm``), their atrous form (``atrous``), the VGG family (``vgg``) and the
HRNet trunk (``hrnet``)."""
