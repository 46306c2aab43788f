// Captioning metrics to the coco-caption definitions (Chen et al. 2015, pycocoevalcap):
//  - tokenisation as its PTBTokenizer pipeline: lower case, Penn-Treebank splitting of
//    punctuation and clitics ('s n't 're ...), then the punctuation tokens it drops are removed;
//  - BLEU-1..4 (Papineni et al. 2002) at corpus level with coco-caption's "closest" reference
//    length and its smoothing constants (tiny = 1e-15, small = 1e-9);
//  - CIDEr-D (Vedantam et al. 2015): TF-IDF n-gram vectors (n = 1..4) with the IDF taken from
//    the reference set, clipped hypothesis weights, a Gaussian length penalty (sigma = 6, on the
//    bigram counts as coco-caption computes it), averaged over references and n, times 10.
#pragma once

#include <string>
#include <vector>

namespace vadapt::eval {

std::vector<std::string> ptb_tokenize(const std::string& text);

// One entry per image: the candidate and its references, all as raw text.
struct CaptionExample {
  std::string candidate;
  std::vector<std::string> references;
};

struct BleuScores {
  double bleu[4] = {0, 0, 0, 0};  // BLEU-1..4, corpus level
};

BleuScores corpus_bleu(const std::vector<CaptionExample>& examples);
// Corpus CIDEr-D and the per-image scores (same order as `examples`).
double cider_d(const std::vector<CaptionExample>& examples, std::vector<double>* per_image = nullptr);

}  // namespace vadapt::eval
