"""COCO evaluation with Boundary AP (Cheng et al., CVPR 2021) next to box and mask AP.

Boundary AP is mask AP with Boundary IoU in place of mask IoU: the IoU of the pixels within d of each
mask's contour, d = 2% of the image diagonal. It rewards sharp, well-placed boundaries, which mask AP
on large objects barely sees. It is computed by faster-coco-eval's "boundary" IoU type from the same
detections as the mask AP.

A model whose detections carry mask_scores (CenterMask's MaskIoU rescoring) is scored as centermask2's
evaluator scores it: box AP ranks the detections by scores, mask and Boundary AP by mask_scores.
"""
from detectron2.utils.logger import create_small_table
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster

from .detectron2_compat import COCOEvaluatorHooks

BOUNDARY_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def boundary_ap(
    gt_dataset: dict, detections: list, img_ids=None, dilation_ratio: float = 0.02, max_dets=(1, 10, 100)
) -> dict:
    """Boundary AP of `detections` (COCO result dicts with RLE "segmentation") against a COCO
    ground-truth dict, counting the max_dets[-1] best detections of each image; metrics in percent,
    NaN where no ground truth of that size exists."""
    gt = FasterCOCO(gt_dataset)
    dt = gt.loadRes([{k: d[k] for k in ("image_id", "category_id", "segmentation", "score")} for d in detections])
    evaluator = COCOeval_faster(gt, dt, iouType="boundary", boundary_dilation_ratio=dilation_ratio, print_function=lambda *a: None)
    evaluator.params.maxDets = list(max_dets)
    if img_ids is not None:
        evaluator.params.imgIds = list(img_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return {m: float(s * 100) if s >= 0 else float("nan") for m, s in zip(BOUNDARY_METRICS, evaluator.stats)}


class BoundaryCOCOEvaluator(COCOEvaluatorHooks):
    """detectron2's COCOEvaluator that also reports the task "boundary" (Boundary AP) whenever it
    evaluates masks, and ranks masks by mask_scores where the detections have them."""

    def process(self, inputs, outputs):
        start = len(self.predictions)
        super().process(inputs, outputs)
        mask_scores = {
            x["image_id"]: out["instances"].mask_scores.tolist()
            for x, out in zip(inputs, outputs)
            if "instances" in out and out["instances"].has("mask_scores")
        }
        for prediction in self.predictions[start:]:
            for result, score in zip(prediction.get("instances", []), mask_scores.get(prediction["image_id"], [])):
                result["mask_score"] = score  # saved with the results json, beside the box "score"

    def eval_predictions(self, predictions, img_ids=None):
        results = [r for p in predictions for r in p.get("instances", [])]
        tasks = set(self.tasks or self.tasks_from_predictions(results))
        if "segm" not in tasks or not any("mask_score" in r for r in results):
            return super().eval_predictions(predictions, img_ids)
        # copied before the first pass, which maps the category ids in place
        by_mask_score = [
            dict(p, instances=[dict(r, score=r["mask_score"]) for r in p.get("instances", [])]) for p in predictions
        ]
        saved = self.tasks, self.output_dir
        try:
            self.tasks = tasks - {"segm"}  # box (and keypoint) AP by scores; writes the results json
            super().eval_predictions(predictions, img_ids)
            self.tasks, self.output_dir = {"segm"}, None  # mask and Boundary AP by mask_scores
            super().eval_predictions(by_mask_score, img_ids)
        finally:
            self.tasks, self.output_dir = saved

    def derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super().derive_coco_results(coco_eval, iou_type, class_names)
        if iou_type == "segm":
            if coco_eval is None:
                boundary = {m: float("nan") for m in BOUNDARY_METRICS}
            else:
                boundary = boundary_ap(
                    self.coco_api.dataset, coco_eval.cocoDt.dataset["annotations"], coco_eval.params.imgIds,
                    max_dets=self.max_dets_per_image,
                )
            self.logger.info("Evaluation results for boundary (Boundary AP):\n" + create_small_table(boundary))
            self.results["boundary"] = boundary
        return results
