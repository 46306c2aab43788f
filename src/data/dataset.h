// Training / evaluation data as conversations with an optional image:
//  llava    LLaVA conversation JSON: [{id, image?, conversations: [{from: human|gpt, value}]}]
//           (ScienceQA in LLaVA's llava_test_CQM-A.json form is this format too)
//  alpaca   Alpaca instruction JSON: [{instruction, input?, output, image?}] (found by content in a
//           .json file too); text-only unless a record names an image
//  coco     COCO captions annotations/captions_*.json: one sample per caption
//  jsonl    one {"image": ..., "text": ...} per line (a caption per image)
//  scienceqa  the original ScienceQA problems.json + pid_splits.json beside it (LoadOptions::
//           pid_split picks the split); prompt and answer in LoadOptions::scienceqa_format;
//           images from images/<train|val|test>/<pid>/image.png beside the file
// A malformed record gets an error naming file, record index and field; with skip_bad it is
// counted and skipped. Missing image files are all reported up front.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "text/prompt.h"

namespace vadapt::data {

struct Sample {
  std::string id;
  std::string image;  // resolved path, or empty for a text-only sample
  // Further images of the same sample, after `image` (the frames of a video or a multi-image
  // record: "image": [a, b, ...]), all for its one <image>; only methods with multi_image() read them.
  std::vector<std::string> frames;
  text::Conversation conv;
  std::string type;  // question type / category for per-type scores (the record's "type" field)
  // Where the record is: "<file> record 12" (JSON lists), "line 13" (JSONL), "annotations[5]"
  // (COCO), "problem <pid>" (ScienceQA); errors found later (training's pre-scan) name it.
  std::string origin;
  // ScienceQA metadata (format scienceqa): subject, grade, has_context ("1"/"0"), choices (count).
  std::map<std::string, std::string> tags;
};

struct LoadOptions {
  std::string format;      // llava | coco | jsonl; empty: from the file name / content
  std::string image_root;  // relative image paths are resolved against it (default: the file's folder)
  bool skip_bad = false;
  bool check_images = true;
  int64_t limit = -1;  // keep at most this many samples (after skipping)
  // Deterministic held-out split by image: with split_every = k, every k-th distinct image (in
  // sorted order; text-only samples by index) goes to "val", the rest to "train".
  int64_t split_every = 0;
  std::string split;  // "", "train" or "val"
  std::string pid_split = "test";  // format scienceqa: a key of pid_splits.json
  // format llava: "front" moves "<image>" to the start of its turn followed by "\n", as LLaVA's
  // preprocess_multimodal does to every training and evaluation sample; "as_written" keeps it.
  std::string image_placement = "front";
  // format scienceqa: CQM-A (LLaVA's evaluation prompt, answer = the letter), QCM-LEA (LLaVA's
  // ScienceQA fine-tune: "lecture solution The answer is X."), QCM-ALE (LaVIN: "The answer is X.
  // BECAUSE: lecture solution").
  std::string scienceqa_format = "CQM-A";
};

struct LoadReport {
  int64_t loaded = 0;
  int64_t skipped = 0;
};

std::vector<Sample> load_dataset(const std::string& path, const LoadOptions& opts, LoadReport* report = nullptr);

}  // namespace vadapt::data
