# Mask R-CNN + FPN on LinSwin-T (InLine in stages 1-3, shifted windows in 4) started from the softmax Swin-T
# ImageNet checkpoint that mmdet's Swin-T configs use: everything Swin-T and LinSwin-T share is loaded (patch
# embedding, norms, MLPs, qkv, proj, patch merging, stage-4 window bias tables); InLine's own parameters keep
# InLine's initialisation. The loading report (mapped / resized / new / dropped) is logged at initialisation.
_base_ = ['../mask_rcnn/mask-rcnn_linswin-t-inline_fpn_1x_coco.py']
model = dict(backbone=dict(init_cfg=dict(
    type='Pretrained', source='timm',
    checkpoint='https://github.com/SwinTransformer/storage/releases/download/v1.0.0/'
               'swin_tiny_patch4_window7_224.pth')))
