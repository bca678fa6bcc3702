// htfr: the command-line face of the HyperField Transformer — train on a teacher capture, evaluate
// teacher-free with ablations, diagnostic modes and n-gram baselines, describe a checkpoint,
// generate text and benchmark inference (the last two in htfr_serve.cpp).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "htfr/htfr.hpp"
#include "htfr/hft.hpp"
#include "htfr/ngram.hpp"
#include "htfr_serve.hpp"
#include "htfr_verify.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

htfr::Backend pick_backend(const std::string& name) {
  if (name == "cpu") return htfr::Backend::cpu;
  if (name == "cuda") return htfr::Backend::cuda;
  return htfr::cuda_device_count() > 0 ? htfr::Backend::cuda : htfr::Backend::cpu;
}

std::string clock_text(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const long s = static_cast<long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
  return buf;
}

/// Appends JSON lines to a metrics file (flushed per line, so a crash loses nothing written).
class MetricsLog {
 public:
  explicit MetricsLog(const std::string& path) {
    if (path.empty()) return;
    out_.open(path, std::ios::app);
    if (!out_) throw htfr::IoError("cannot open metrics file " + path);
  }
  void write(const json& line) {
    if (!out_.is_open()) return;
    out_ << line.dump() << '\n';
    out_.flush();
  }

 private:
  std::ofstream out_;
};

json report_json(const htfr::HftEvalReport& r) {
  return json{{"mode", htfr::to_string(r.mode)},
              {"stage1", r.stage1_enabled},
              {"tail", r.tail_enabled},
              {"tokens", r.tokens},
              {"student_ppl", r.student_ppl},
              {"teacher_ppl", r.teacher_ppl},
              {"ratio", r.student_ppl / r.teacher_ppl},
              {"kl", r.kl},
              {"top1", r.top1},
              {"target_top1", r.target_top1},
              {"coverage", r.coverage},
              {"stage1_cosine", r.stage1_cosine},
              {"eval_seconds", r.seconds},
              {"eval_tokens_per_s", r.tokens_per_s}};
}

// ------------------------------------------------------------------ train

struct TrainArgs {
  std::string train, eval, embedding, config, out, metrics, backend = "auto", preset = "default";
  int64_t max_train = 0, max_eval = 0;
  bool resume = false, quiet = false, profile = false;
};

int run_train(const TrainArgs& a) {
  const htfr::Backend backend = pick_backend(a.backend);
  const htfr::CaptureReader train_capture(a.train);
  htfr::HftConfig config =
      a.preset == "small" ? htfr::small_hft_config() : htfr::default_hft_config();
  if (!a.config.empty()) config = htfr::hft_config_from_json(htfr::read_file(a.config), config);
  std::optional<htfr::HftModel> model;
  if (a.resume && fs::exists(a.out)) {
    model.emplace(htfr::HftModel::load(a.out, backend));
    std::fprintf(stderr, "resuming %s after epoch %lld\n", a.out.c_str(),
                 static_cast<long long>(model->epochs_done()));
  } else {
    const std::string emb_path =
        a.embedding.empty() ? (fs::path(a.train) / "compact_embedding.safetensors").string()
                            : a.embedding;
    const auto embedding = htfr::read_compact_embedding(emb_path, train_capture.manifest());
    model.emplace(htfr::HftModel::create(config, embedding, train_capture, backend));
  }
  const htfr::HftConfig& c = model->config();
  std::fprintf(stderr, "backend %s, stage 1 %lld tensors, stage 2 %lld tensors, %.1f MiB parameters\n",
               htfr::to_string(backend), static_cast<long long>(c.stage1.htfr.num_tensors),
               static_cast<long long>(c.stage2.htfr.num_tensors),
               model->parameter_bytes() / 1048576.0);
  const auto t_load = std::chrono::steady_clock::now();
  const htfr::HftData data = model->load_data(train_capture, a.max_train);
  std::optional<htfr::CaptureReader> eval_capture;
  std::optional<htfr::HftData> eval_data;
  if (!a.eval.empty()) {
    eval_capture.emplace(a.eval);
    eval_data.emplace(model->load_data(*eval_capture, a.max_eval));
  }
  std::fprintf(stderr, "training rows %lld (%lld windows), evaluation rows %lld; loaded in %.1f s\n",
               static_cast<long long>(data.rows()), static_cast<long long>(data.streams()),
               static_cast<long long>(eval_data ? eval_data->rows() : 0),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count());
  MetricsLog log(a.metrics);
  const bool tty = !a.quiet && isatty(STDERR_FILENO);
  const int64_t epochs = c.pretrain_epochs + c.finetune_epochs;
  double last_line = -1;
  auto progress = [&](const htfr::HftTrainProgress& p) {
    const double rate = p.epoch_tokens / std::max(p.seconds, 1e-9);
    const double eta = (p.epoch_total - p.epoch_tokens) / std::max(rate, 1e-9);
    if (!std::isnan(p.stage2_loss) && p.seconds - last_line >= 1.0) {
      last_line = p.seconds;
      log.write(json{{"kind", "train"},
                     {"epoch", p.epoch},
                     {"finetune", p.finetune},
                     {"step", p.step},
                     {"tokens", p.tokens},
                     {"stage1_loss", p.stage1_loss},
                     {"stage2_loss", p.stage2_loss},
                     {"stage1_grad_norm", p.stage1_grad_norm},  // null in pretraining
                     {"tokens_per_s", rate}});
    }
    if (tty) {
      std::fprintf(stderr,
                   "\r[epoch %lld/%lld %s] %5.1f%% %lld/%lld tok  %.0f tok/s  ETA %s   ",
                   static_cast<long long>(p.epoch + 1), static_cast<long long>(epochs),
                   p.finetune ? "fine-tune" : "pretrain", 100.0 * p.epoch_tokens / p.epoch_total,
                   static_cast<long long>(p.epoch_tokens), static_cast<long long>(p.epoch_total),
                   rate, clock_text(eta).c_str());
    }
  };
  auto after_epoch = [&](int64_t epoch) {
    if (tty) std::fprintf(stderr, "\n");
    model->save(a.out);
    json line{{"kind", "eval"}, {"epoch", epoch}, {"step", model->steps_done()},
              {"tokens", epoch * data.rows()}, {"checkpoint", a.out}};
    if (eval_data) {
      const htfr::HftEvalReport r = model->evaluate(*eval_data);
      line.update(report_json(r));
      std::fprintf(stderr,
                   "epoch %lld: student ppl %.2f, teacher ppl %.2f, ratio %.2f, KL %.3f, top-1 "
                   "%.3f (%.0f tok/s)\n",
                   static_cast<long long>(epoch), r.student_ppl, r.teacher_ppl,
                   r.student_ppl / r.teacher_ppl, r.kl, r.top1, r.tokens_per_s);
    } else {
      std::fprintf(stderr, "epoch %lld done, checkpoint %s\n", static_cast<long long>(epoch),
                   a.out.c_str());
    }
    line["statistics"] = json::parse(model->statistics_json());
    log.write(line);
  };
  model->set_profiling(a.profile);
  const auto start = std::chrono::steady_clock::now();
  const int64_t before = model->epochs_done();
  model->train(data, progress, after_epoch);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const int64_t trained = model->epochs_done() - before;
  std::fprintf(stderr, "trained %lld epochs in %.1f s (%.0f training tokens/s incl. evaluation)\n",
               static_cast<long long>(trained), seconds,
               trained * data.rows() / std::max(seconds, 1e-9));
  for (const auto& [name, s] : model->phase_seconds())
    std::fprintf(stderr, "  %-40s %8.2f s\n", name.c_str(), s);
  return 0;
}

// ------------------------------------------------------------------ eval

struct EvalArgs {
  std::string checkpoint, capture, train, json_out, backend = "auto";
  int64_t max = 0, max_train = 0;
  bool diagnostics = true;
};

/// Perplexity of an n-gram model over the scored rows of `data` (windows as sequences).
double ngram_ppl(const htfr::NgramModel& m, const htfr::HftData& data) {
  double nll = 0;
  int64_t n = 0;
  const auto& first = data.stream_first_row();
  const auto& len = data.stream_length();
  for (std::size_t s = 0; s < first.size(); ++s) {
    const int32_t* t = data.targets().data() + first[s];
    const std::vector<double> lp = m.sequence_log_probs(t, len[s]);
    for (int32_t p = 0; p < len[s]; ++p)
      if (data.scored()[first[s] + p]) {
        nll -= lp[p];
        ++n;
      }
  }
  return std::exp(nll / std::max<int64_t>(n, 1));
}

int run_eval(const EvalArgs& a) {
  const htfr::Backend backend = pick_backend(a.backend);
  const htfr::HftModel model = htfr::HftModel::load(a.checkpoint, backend, 0, false);
  const htfr::CaptureReader capture(a.capture);
  const htfr::HftData data = model.load_data(capture, a.max);
  json out{{"checkpoint", a.checkpoint},
           {"capture", a.capture},
           {"backend", htfr::to_string(backend)},
           {"epochs", model.epochs_done()},
           {"rows", data.rows()},
           {"scored_rows", data.scored_rows()}};
  std::printf("%-34s %12s %12s %8s %8s %7s %10s\n", "evaluation", "student ppl", "teacher ppl",
              "ratio", "KL", "top-1", "tok/s");
  const auto show = [&](const std::string& name, const htfr::HftEvalReport& r) {
    std::printf("%-34s %12.2f %12.2f %8.3f %8.3f %7.3f %10.0f\n", name.c_str(), r.student_ppl,
                r.teacher_ppl, r.student_ppl / r.teacher_ppl, r.kl, r.top1, r.tokens_per_s);
    out["runs"][name] = report_json(r);
  };
  const htfr::HftEvalReport full = model.evaluate(data);
  show("teacher_free (headline)", full);
  const htfr::HftEvalReport no_s1 = model.evaluate(data, htfr::HftMode::teacher_free, false, true);
  show("teacher_free, Stage 1 off", no_s1);
  const htfr::HftEvalReport no_tail = model.evaluate(data, htfr::HftMode::teacher_free, true, false);
  show("teacher_free, tail off", no_tail);
  if (a.diagnostics) {
    show("teacher_assisted (diagnostic)", model.evaluate(data, htfr::HftMode::teacher_assisted));
    show("leaky (diagnostic)", model.evaluate(data, htfr::HftMode::leaky));
  }
  out["tail_kl_rise"] = no_tail.kl / full.kl - 1.0;
  if (!a.train.empty()) {
    const htfr::CaptureReader train_capture(a.train);
    const htfr::HftData train = model.load_data(train_capture, a.max_train);
    const int64_t V = model.config().context.vocab_size;
    for (int order : {1, 3, 5}) {
      htfr::NgramOptions o;
      o.order = order;
      o.vocab_size = V;
      o.smoothing = order == 1 ? htfr::NgramSmoothing::additive : htfr::NgramSmoothing::kneser_ney;
      htfr::NgramModel m(o);
      const auto& first = train.stream_first_row();
      for (std::size_t s = 0; s < first.size(); ++s)
        m.add_sequence(train.targets().data() + first[s], train.stream_length()[s]);
      m.finalize();
      const double ppl = ngram_ppl(m, data);
      const std::string name = order == 1 ? "unigram" : "kn" + std::to_string(order);
      out["baselines"][name] = ppl;
      std::printf("%-34s %12.2f\n", (order == 1 ? std::string("unigram (add-one)")
                                                : "Kneser-Ney " + std::to_string(order) + "-gram")
                                        .c_str(),
                  ppl);
    }
    // Per-stage shares of the log-perplexity reduction from the unigram model to the student.
    const double uni = std::log(out["baselines"]["unigram"].get<double>());
    const double total = uni - std::log(full.student_ppl);
    if (total > 0) {
      const double s1 = (std::log(no_s1.student_ppl) - std::log(full.student_ppl)) / total;
      out["stage_contribution"] = {{"stage1", s1}, {"stage2", 1.0 - s1}};
      std::printf("share of the log-perplexity reduction below unigram: Stage 1 %.1f %%, Stage 2 "
                  "%.1f %%\n",
                  100 * s1, 100 * (1 - s1));
    }
    out["train_rows"] = train.rows();
  }
  std::printf("tail off raises KL by %.1f %%\n", 100 * out["tail_kl_rise"].get<double>());
  if (!a.json_out.empty()) htfr::write_file_atomic(a.json_out, out.dump(2) + "\n");
  return 0;
}

// ------------------------------------------------------------------ info

int run_info(const std::string& checkpoint) {
  const htfr::HftModel model = htfr::HftModel::load(checkpoint, htfr::Backend::cpu, 0, false);
  const htfr::HftConfig& c = model.config();
  std::printf("checkpoint      %s\n", checkpoint.c_str());
  std::printf("epochs done     %lld (pretrain %lld + fine-tune %lld scheduled)\n",
              static_cast<long long>(model.epochs_done()),
              static_cast<long long>(c.pretrain_epochs), static_cast<long long>(c.finetune_epochs));
  std::printf("steps done      %lld\n", static_cast<long long>(model.steps_done()));
  std::printf("stage 1         %lld tensors, %lld -> %lld, top-%lld, %s\n",
              static_cast<long long>(c.stage1.htfr.num_tensors),
              static_cast<long long>(c.stage1.htfr.input_dim),
              static_cast<long long>(c.stage1.htfr.output_dim),
              static_cast<long long>(c.stage1.htfr.top_k), htfr::to_string(c.stage1.htfr.optimizer));
  std::printf("stage 2         %lld tensors, %lld -> %lld, top-%lld, %s\n",
              static_cast<long long>(c.stage2.htfr.num_tensors),
              static_cast<long long>(c.stage2.htfr.input_dim),
              static_cast<long long>(c.stage2.htfr.output_dim),
              static_cast<long long>(c.stage2.htfr.top_k), htfr::to_string(c.stage2.htfr.optimizer));
  std::printf("parameters      %.1f MiB\n", model.parameter_bytes() / 1048576.0);
  std::printf("statistics      %s\n", model.statistics_json().c_str());
  std::printf("config\n%s\n", htfr::to_json(c).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"htfr: train, evaluate and run the two-stage HyperField Transformer"};
  app.require_subcommand(1);
  TrainArgs ta;
  auto* train = app.add_subcommand("train", "train both stages on a teacher capture");
  train->add_option("--train", ta.train, "training capture directory")->required();
  train->add_option("--eval", ta.eval, "evaluation capture directory (evaluated after each epoch)");
  train->add_option("--embedding", ta.embedding,
                    "compact embedding file (default: <train>/compact_embedding.safetensors)");
  train->add_option("--preset", ta.preset, "default (the HFT note's sizes) or small (CPU budget)")
      ->check(CLI::IsMember({"default", "small"}));
  train->add_option("--config", ta.config, "JSON config (overrides the preset key by key)");
  train->add_option("--out", ta.out, "checkpoint file, rewritten after every epoch")->required();
  train->add_option("--metrics", ta.metrics, "JSONL metrics file (appended)");
  train->add_option("--backend", ta.backend, "cpu, cuda or auto")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  train->add_option("--max-train", ta.max_train, "use at most this many training rows");
  train->add_option("--max-eval", ta.max_eval, "use at most this many evaluation rows");
  train->add_flag("--resume", ta.resume, "continue from --out when it exists");
  train->add_flag("--quiet", ta.quiet, "no progress bar");
  train->add_flag("--profile", ta.profile, "time each training phase (synchronises per phase)");
  EvalArgs ea;
  auto* eval = app.add_subcommand("eval", "evaluate a checkpoint teacher-free, with ablations");
  eval->add_option("--checkpoint", ea.checkpoint, "checkpoint file")->required();
  eval->add_option("--capture", ea.capture, "evaluation capture directory")->required();
  eval->add_option("--train", ea.train, "training capture: adds the n-gram baselines");
  eval->add_option("--max", ea.max, "use at most this many evaluation rows");
  eval->add_option("--max-train", ea.max_train, "n-gram training rows (default: all)");
  eval->add_option("--json", ea.json_out, "write the results as JSON");
  eval->add_option("--backend", ea.backend, "cpu, cuda or auto")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  bool no_diag = false;
  eval->add_flag("--no-diagnostics", no_diag, "skip the teacher-assisted and leaky modes");
  std::string info_path;
  auto* info = app.add_subcommand("info", "describe a checkpoint");
  info->add_option("checkpoint", info_path, "checkpoint file")->required();
  htfr_cli::GenerateArgs ga;
  std::string gen_backend = "auto";
  auto* gen = app.add_subcommand("generate", "continue a prompt teacher-free with a checkpoint");
  gen->add_option("--checkpoint", ga.checkpoint, "checkpoint file")->required();
  gen->add_option("--gguf", ga.gguf, "the teacher's GGUF (its tokenizer)")->required();
  gen->add_option("--prompt", ga.prompt, "text to continue")->required();
  gen->add_option("--max-tokens", ga.max_tokens, "tokens to generate (stops early at EOS)");
  gen->add_option("--temperature", ga.temperature, "0: greedy");
  gen->add_option("--top-p", ga.top_p, "nucleus mass in (0, 1]");
  gen->add_option("--seed", ga.seed, "sampling seed");
  gen->add_option("--backend", gen_backend, "cpu, cuda or auto")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  gen->add_flag("--no-graph", ga.no_graph, "do not replay steps as CUDA graphs");
  gen->add_flag("--any-gguf", ga.any_gguf, "skip the check that the GGUF is the checkpoint's teacher");
  htfr_cli::ServeBenchArgs sa;
  auto* serve = app.add_subcommand("serve-bench", "time incremental decode steps on the GPU");
  serve->add_option("--checkpoint", sa.checkpoint, "checkpoint file")->required();
  serve->add_option("--batches", sa.batches, "session counts")->delimiter(',');
  serve->add_option("--steps", sa.steps, "timed steps per batch size");
  serve->add_option("--warmup", sa.warmup, "untimed steps first");
  serve->add_option("--context", sa.context, "tokens fed before timing");
  serve->add_option("--json", sa.json_out, "write the results as JSON");
  serve->add_option("--commit", sa.commit, "commit recorded in the JSON");
  serve->add_flag("--eager-all", sa.eager_all, "also time steps without CUDA graphs above batch 1");
  serve->add_option("--untrained-from", sa.untrained_from,
                    "first write an untrained default-size model to --checkpoint, its statistics "
                    "from this capture");
  htfr_cli::VerifyArgs va;
  std::string verify_backend = "auto";
  auto* verify = app.add_subcommand("verify", "information-flow checks of a trained model (HFT note §9)");
  verify->add_option("--checkpoint", va.checkpoint, "checkpoint file")->required();
  verify->add_option("--capture", va.capture, "capture directory (the held-out evaluation capture)")
      ->required();
  verify->add_option("--json", va.json_out, "write the report as JSON");
  verify->add_option("--commit", va.commit, "commit recorded in the JSON");
  verify->add_option("--max-positions", va.max_positions, "capture rows loaded (0: all)");
  verify->add_option("--sequences", va.options.sequences, "probe sequences");
  verify->add_option("--length", va.options.length, "tokens per probe sequence");
  verify->add_option("--ablate-offsets", va.options.ablate_offsets, "token offsets ablated");
  verify->add_option("--position-buckets", va.options.position_buckets, "position ranges");
  verify->add_option("--coupling-rows", va.options.coupling_rows,
                     "rows the probe copy fine-tunes on (0: all)");
  verify->add_option("--seed", va.options.seed, "phase permutation and injected tokens");
  verify->add_option("--backend", verify_backend, "cpu, cuda or auto")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  CLI11_PARSE(app, argc, argv);
  try {
    if (*train) return run_train(ta);
    if (*eval) {
      ea.diagnostics = !no_diag;
      return run_eval(ea);
    }
    if (*info) return run_info(info_path);
    if (*gen) {
      ga.backend = pick_backend(gen_backend);
      return htfr_cli::run_generate(ga);
    }
    if (*serve) return htfr_cli::run_serve_bench(sa);
    if (*verify) {
      va.backend = pick_backend(verify_backend);
      return htfr_cli::run_verify(va);
    }
  } catch (const htfr::Error& e) {
    std::fprintf(stderr, "\nhtfr: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\nhtfr: unexpected error: %s\n", e.what());
    return 1;
  }
  return 0;
}
