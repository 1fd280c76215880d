"""Train or evaluate any model of this project (Mask R-CNN, BlendMask, CenterMask, RefineMask).

    python projects/train_net.py --config-file configs/MaskRCNN/mask_rcnn_R_18_FPN_shapes.yaml
    python projects/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/.../model_final.pth
    python projects/train_net.py --config-file ... --resume          # continue from last_checkpoint
    python projects/train_net.py --config-file ... --num-gpus 2       # (CPU: 2 processes over gloo)
    torchrun --nproc-per-node 2 projects/train_net.py --config-file ...   # the same, started by torchrun
    python projects/train_net.py --config-file ... --register-coco my_train ann.json images/ \\
        DATASETS.TRAIN '("my_train",)' MODEL.ROI_HEADS.NUM_CLASSES 5

Options after the flags are KEY VALUE config overrides, as in detectron2's tools/train_net.py.
"""
import instseg  # noqa: F401  (first: quiets the warnings detectron2 and fvcore raise on import)
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results

from instseg.checkpoint import Checkpointer, load_inference_weights
from instseg.data.datasets import register_coco_datasets
from instseg.distributed import init_torchrun_process_group, launched_by_torchrun
from instseg.engine import Trainer, build_config
from instseg.logs import setup_run_logging


def main(args):
    register_coco_datasets(args.register_coco or [])
    # evaluation reads only DATASETS.TEST: DATASETS.TRAIN need not be registered then
    cfg = build_config(args.config_file, args.opts, task="eval" if args.eval_only else "train")
    setup_run_logging(cfg, args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = Checkpointer(model, save_dir=cfg.OUTPUT_DIR)
        resumed = args.resume and checkpointer.has_checkpoint()
        # every weight must come from the checkpoint, unless TEST.ALLOW_RANDOM_WEIGHTS
        load_inference_weights(model, cfg, checkpointer.get_checkpoint_file() if resumed else cfg.MODEL.WEIGHTS)
        results = Trainer.test(cfg, model)
        verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--register-coco",
        nargs=3,
        action="append",
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format instance dataset under NAME (repeatable)",
    )
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    if launched_by_torchrun():
        init_torchrun_process_group()
        main(args)
    else:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
