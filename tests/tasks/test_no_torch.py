"""The edge app and the server decode detections without torch."""

import subprocess
import sys


def test_numpy_twins_import_without_torch():
    code = (
        "import sys, numpy as np\n"
        "import fedge.tasks\n"
        "from fedge.tasks.responses import detection_response, classification_response\n"
        "from fedge.tasks.boxes import box_iou\n"
        "from fedge.tasks.coco_eval import coco_map\n"
        "detection_response(np.zeros((1, 5, 4, 4), np.float32), num_classes=1,\n"
        "                   image_size=(16, 16))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_public_name_resolves():
    import fedge.tasks

    for name in fedge.tasks.__all__:
        assert getattr(fedge.tasks, name) is not None, name
