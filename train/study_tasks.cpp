// The study tasks: image classification (Fashion-MNIST, or Gaussian blobs for tests) with a
// logistic regression or an MLP, and a character-level GPT.
#include "train/study_tasks.h"

#include <fstream>
#include <random>
#include <sstream>

#include "autograd/grad_mode.h"
#include "autograd/json_reader.h"
#include "autograd/ops.h"
#include "data/char_tokenizer.h"
#include "data/idx.h"
#include "data/loader.h"
#include "nn/activation.h"
#include "nn/containers.h"
#include "nn/linear.h"
#include "nn/transformer.h"

namespace kiln::train {

namespace {

// Batches are drawn with std::mt19937_64 and plain modulo (not std::uniform_int_distribution,
// whose algorithm differs between standard libraries) so that the data order is the same
// everywhere.
uint64_t draw_below(std::mt19937_64& rng, uint64_t bound) { return rng() % bound; }

int64_t count_correct(const Tensor& logits, const Tensor& targets) {
  std::vector<int64_t> predicted = argmax(logits.detach(), -1).to_vector<int64_t>();
  std::vector<int64_t> truth = targets.to_vector<int64_t>();
  int64_t correct = 0;
  for (size_t i = 0; i < predicted.size(); ++i) correct += predicted[i] == truth[i];
  return correct;
}

// ---- classification ------------------------------------------------------------------------

struct ClassifierSpec {
  std::string model = "mlp";  // logistic or mlp
  int64_t hidden = 1000;
  int64_t layers = 2;
  double dropout = 0.5;
};

class ClassificationRun : public TaskRun {
 public:
  ClassificationRun(const ClassifierSpec& spec, const data::ImageDataset& train, const data::ImageDataset& test,
                    int64_t classes, uint64_t seed, int64_t batch_size)
      : train_(train), test_(test), batch_size_(batch_size), generator_(seed), order_rng_(seed) {
    int64_t width = train.images.size(1);
    model_ = std::make_shared<nn::Sequential>();
    if (spec.model == "mlp") {
      for (int64_t layer = 0; layer < spec.layers; ++layer) {
        model_->add(std::make_shared<nn::Linear>(width, spec.hidden, true, &generator_));
        model_->add(std::make_shared<nn::ReLU>());
        if (spec.dropout > 0) model_->add(std::make_shared<nn::Dropout>(spec.dropout, &generator_));
        width = spec.hidden;
      }
    }
    model_->add(std::make_shared<nn::Linear>(width, classes, true, &generator_));
  }

  NamedParameters parameters() const override { return model_->named_parameters(); }

  TrainStep train_step(int64_t step) override {
    int64_t examples = train_.images.size(0);
    int64_t per_epoch = examples / batch_size_;
    if (step % per_epoch == 0) shuffle(examples);
    std::vector<int64_t> rows(order_.begin() + (step % per_epoch) * batch_size_,
                              order_.begin() + (step % per_epoch + 1) * batch_size_);
    Tensor index = from_vector(rows, {batch_size_});
    Tensor targets = index_select(train_.labels, 0, index);
    Tensor logits = model_->forward(index_select(train_.images, 0, index));  // (B, F) -> (B, C)
    return TrainStep{cross_entropy(logits, targets), count_correct(logits, targets), batch_size_};
  }

  Evaluation evaluate() override {
    NoGradGuard no_grad;
    model_->eval();
    int64_t examples = test_.images.size(0), chunk = 2000, correct = 0;
    double loss_sum = 0.0;
    for (int64_t start = 0; start < examples; start += chunk) {
      int64_t length = std::min(chunk, examples - start);
      Tensor targets = test_.labels.narrow(0, start, length);
      Tensor logits = model_->forward(test_.images.narrow(0, start, length));
      loss_sum += cross_entropy(logits, targets, CrossEntropyOptions().reduce(Reduction::sum)).item();
      correct += count_correct(logits, targets);
    }
    model_->train();
    return Evaluation{loss_sum / static_cast<double>(examples),
                      static_cast<double>(correct) / static_cast<double>(examples)};
  }

 private:
  void shuffle(int64_t examples) {
    order_.resize(static_cast<size_t>(examples));
    for (int64_t i = 0; i < examples; ++i) order_[static_cast<size_t>(i)] = i;
    for (size_t i = order_.size() - 1; i > 0; --i) std::swap(order_[i], order_[draw_below(order_rng_, i + 1)]);
  }

  data::ImageDataset train_, test_;
  int64_t batch_size_;
  Generator generator_;  // initial weights and dropout masks
  std::mt19937_64 order_rng_;
  std::vector<int64_t> order_;
  std::shared_ptr<nn::Sequential> model_;
};

class ClassificationTask : public StudyTask {
 public:
  ClassificationTask(std::string name, ClassifierSpec spec, data::ImageDataset train, data::ImageDataset test,
                     int64_t classes)
      : name_(std::move(name)), spec_(std::move(spec)), train_(std::move(train)), test_(std::move(test)),
        classes_(classes) {}

  std::string description() const override {
    std::ostringstream text;
    text << name_ << ", ";
    if (spec_.model == "logistic") {
      text << "logistic regression " << train_.images.size(1) << "-" << classes_;
    } else {
      text << spec_.layers << "-hidden-layer MLP " << train_.images.size(1);
      for (int64_t i = 0; i < spec_.layers; ++i) text << "-" << spec_.hidden;
      text << "-" << classes_ << " (ReLU, dropout " << spec_.dropout << ")";
    }
    text << ", " << train_.images.size(0) << " train / " << test_.images.size(0) << " test examples";
    return text.str();
  }
  int64_t steps_per_epoch(int64_t batch_size) const override { return train_.images.size(0) / batch_size; }
  std::unique_ptr<TaskRun> start(uint64_t seed, int64_t batch_size) const override {
    KILN_CHECK(batch_size <= train_.images.size(0), "training.batch_size: ", batch_size, " is more than the ",
               train_.images.size(0), " training examples");
    return std::make_unique<ClassificationRun>(spec_, train_, test_, classes_, seed, batch_size);
  }

 private:
  std::string name_;
  ClassifierSpec spec_;
  data::ImageDataset train_, test_;
  int64_t classes_;
};

ClassifierSpec read_classifier(JsonReader& reader) {
  ClassifierSpec spec;
  reader.read("model", spec.model);
  reader.read("hidden", spec.hidden);
  reader.read("layers", spec.layers);
  reader.read("dropout", spec.dropout);
  KILN_CHECK(spec.model == "logistic" || spec.model == "mlp", reader.where("model"),
             ": expected \"logistic\" or \"mlp\", got \"", spec.model, "\"");
  KILN_CHECK(spec.hidden > 0 && spec.layers > 0, reader.where("hidden"), " and layers: must be positive");
  KILN_CHECK(spec.dropout >= 0 && spec.dropout < 1, reader.where("dropout"), ": must be in [0, 1), got ", spec.dropout);
  return spec;
}

data::ImageDataset first_examples(const data::ImageDataset& data, int64_t count, const std::string& where) {
  if (count == 0) return data;
  KILN_CHECK(count > 0 && count <= data.images.size(0), where, ": expected 1..", data.images.size(0), ", got ", count);
  return {data.images.narrow(0, 0, count).contiguous(), data.labels.narrow(0, 0, count).contiguous()};
}

std::unique_ptr<StudyTask> make_fashion_mnist(JsonReader& reader) {
  ClassifierSpec spec = read_classifier(reader);
  std::string directory = data::kFashionMnistDirectory;
  int64_t train_examples = 0, test_examples = 0;  // 0: all
  reader.read("directory", directory);
  reader.read("train_examples", train_examples);
  reader.read("test_examples", test_examples);
  reader.finish();
  data::ImageDataset train = first_examples(data::load_fashion_mnist("train", directory), train_examples,
                                            reader.where("train_examples"));
  data::ImageDataset test = first_examples(data::load_fashion_mnist("test", directory), test_examples,
                                           reader.where("test_examples"));
  return std::make_unique<ClassificationTask>("Fashion-MNIST", spec, train, test, 10);
}

// Class c's examples are N(mean_c, I) with mean_c ~ N(0, separation^2 I): a tiny, file-free
// stand-in for Fashion-MNIST with the same models, for tests.
std::unique_ptr<StudyTask> make_gaussian_blobs(JsonReader& reader) {
  ClassifierSpec spec = read_classifier(reader);
  int64_t classes = 4, features = 16, train_examples = 512, test_examples = 256;
  double separation = 1.0;
  uint64_t data_seed = 0;
  reader.read("classes", classes);
  reader.read("features", features);
  reader.read("train_examples", train_examples);
  reader.read("test_examples", test_examples);
  reader.read("separation", separation);
  reader.read("data_seed", data_seed);
  reader.finish();
  KILN_CHECK(classes > 1 && features > 0 && train_examples > 0 && test_examples > 0, reader.where("classes"),
             ", features, train_examples and test_examples: must be positive (classes > 1)");
  Generator generator(data_seed);
  Tensor means = randn({classes, features}, {}, &generator) * separation;
  auto sample = [&](int64_t count) {
    std::vector<int64_t> labels(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) labels[static_cast<size_t>(i)] = i % classes;
    Tensor label_tensor = from_vector(labels, {count});
    Tensor images = (index_select(means, 0, label_tensor) + randn({count, features}, {}, &generator)).contiguous();
    return data::ImageDataset{images, label_tensor};
  };
  data::ImageDataset train = sample(train_examples);
  data::ImageDataset test = sample(test_examples);
  return std::make_unique<ClassificationTask>("Gaussian blobs", spec, train, test, classes);
}

// ---- character-level GPT -------------------------------------------------------------------

struct CharCorpus {
  std::vector<int64_t> train, val;
  std::vector<data::Batch> val_batches;  // fixed, so every run is evaluated on the same text
};

class CharGptRun : public TaskRun {
 public:
  CharGptRun(const nn::TransformerConfig& config, std::shared_ptr<const CharCorpus> corpus, uint64_t seed,
             int64_t batch_size)
      : corpus_(std::move(corpus)), batch_size_(batch_size), generator_(seed), order_rng_(seed) {
    model_ = std::make_shared<nn::Transformer>(config, &generator_);
    seq_len_ = config.block_size;
  }

  NamedParameters parameters() const override { return model_->named_parameters(); }

  TrainStep train_step(int64_t) override {
    std::vector<int64_t> inputs, targets;
    uint64_t starts = corpus_->train.size() - static_cast<uint64_t>(seq_len_);
    for (int64_t b = 0; b < batch_size_; ++b) {
      auto begin = corpus_->train.begin() + static_cast<std::ptrdiff_t>(draw_below(order_rng_, starts));
      inputs.insert(inputs.end(), begin, begin + seq_len_);
      targets.insert(targets.end(), begin + 1, begin + seq_len_ + 1);
    }
    return step_on({from_vector(inputs, {batch_size_, seq_len_}), from_vector(targets, {batch_size_, seq_len_})});
  }

  Evaluation evaluate() override {
    NoGradGuard no_grad;
    model_->eval();
    double loss = 0.0, correct = 0.0, count = 0.0;
    for (const data::Batch& batch : corpus_->val_batches) {
      TrainStep result = step_on(batch);
      loss += result.loss.item();
      correct += static_cast<double>(result.correct);
      count += static_cast<double>(result.count);
    }
    model_->train();
    return Evaluation{loss / static_cast<double>(corpus_->val_batches.size()), correct / count};
  }

 private:
  TrainStep step_on(const data::Batch& batch) {
    Tensor logits = model_->forward(batch.inputs);  // (B, T) -> (B, T, V)
    int64_t rows = batch.inputs.numel();
    Tensor flat_logits = logits.reshape({rows, logits.size(2)});
    Tensor flat_targets = batch.targets.reshape({rows});
    return TrainStep{cross_entropy(flat_logits, flat_targets), count_correct(flat_logits, flat_targets), rows};
  }

  std::shared_ptr<const CharCorpus> corpus_;
  int64_t batch_size_, seq_len_ = 0;
  Generator generator_;
  std::mt19937_64 order_rng_;
  std::shared_ptr<nn::Transformer> model_;
};

class CharGptTask : public StudyTask {
 public:
  CharGptTask(std::string text_path, nn::TransformerConfig config, std::shared_ptr<const CharCorpus> corpus)
      : text_path_(std::move(text_path)), config_(std::move(config)), corpus_(std::move(corpus)) {}

  std::string description() const override {
    std::ostringstream text;
    text << "character-level GPT on " << text_path_ << " (" << config_.n_layers << " layers, " << config_.n_heads
         << " heads, d_model " << config_.d_model << ", context " << config_.block_size << ", vocabulary "
         << config_.vocab_size << "; " << corpus_->train.size() << " train / " << corpus_->val.size()
         << " validation characters)";
    return text.str();
  }
  int64_t steps_per_epoch(int64_t batch_size) const override {
    return static_cast<int64_t>(corpus_->train.size()) / (batch_size * config_.block_size);
  }
  std::unique_ptr<TaskRun> start(uint64_t seed, int64_t batch_size) const override {
    return std::make_unique<CharGptRun>(config_, corpus_, seed, batch_size);
  }

 private:
  std::string text_path_;
  nn::TransformerConfig config_;
  std::shared_ptr<const CharCorpus> corpus_;
};

std::unique_ptr<StudyTask> make_char_gpt(JsonReader& reader) {
  std::string text_path = "../shared/data/tinyshakespeare.txt";
  int64_t seq_len = 64, eval_batches = 8, eval_batch_size = 32;
  double val_fraction = 0.1;
  reader.read("text", text_path);
  reader.read("seq_len", seq_len);
  reader.read("val_fraction", val_fraction);
  reader.read("eval_batches", eval_batches);
  reader.read("eval_batch_size", eval_batch_size);
  nlohmann::json model_json = reader.has("model") ? reader.raw("model") : nlohmann::json::object();
  reader.finish();
  KILN_CHECK(seq_len > 0 && eval_batches > 0 && eval_batch_size > 0, reader.where("seq_len"),
             ", eval_batches and eval_batch_size: must be positive");
  KILN_CHECK(val_fraction > 0 && val_fraction < 1, reader.where("val_fraction"), ": must be in (0, 1), got ",
             val_fraction);

  std::ifstream in(text_path, std::ios::binary);
  KILN_CHECK(in.good(), reader.where("text"), ": cannot read ", text_path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  data::CharTokenizer tokenizer = data::CharTokenizer::train(text);
  std::vector<data::TokenId> tokens = tokenizer.encode(text);
  auto corpus = std::make_shared<CharCorpus>();
  size_t split = static_cast<size_t>(static_cast<double>(tokens.size()) * (1.0 - val_fraction));
  corpus->train.assign(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(split));
  corpus->val.assign(tokens.begin() + static_cast<std::ptrdiff_t>(split), tokens.end());
  KILN_CHECK(corpus->train.size() > static_cast<size_t>(seq_len) && corpus->val.size() > static_cast<size_t>(seq_len),
             reader.where("text"), ": ", text_path, " is too short for seq_len ", seq_len);

  std::mt19937_64 val_rng(20240601);  // fixed: the validation batches do not depend on the run
  uint64_t starts = corpus->val.size() - static_cast<uint64_t>(seq_len);
  for (int64_t b = 0; b < eval_batches; ++b) {
    std::vector<int64_t> inputs, targets;
    for (int64_t row = 0; row < eval_batch_size; ++row) {
      auto begin = corpus->val.begin() + static_cast<std::ptrdiff_t>(draw_below(val_rng, starts));
      inputs.insert(inputs.end(), begin, begin + seq_len);
      targets.insert(targets.end(), begin + 1, begin + seq_len + 1);
    }
    corpus->val_batches.push_back(
        {from_vector(inputs, {eval_batch_size, seq_len}), from_vector(targets, {eval_batch_size, seq_len})});
  }

  if (!model_json.contains("vocab_size")) model_json["vocab_size"] = tokenizer.vocab_size();
  if (!model_json.contains("block_size")) model_json["block_size"] = seq_len;
  nn::TransformerConfig config = nn::TransformerConfig::from_json(model_json, reader.where("model"));
  KILN_CHECK(config.block_size == seq_len, reader.where("model.block_size"), ": must equal seq_len ", seq_len);
  KILN_CHECK(config.vocab_size >= tokenizer.vocab_size(), reader.where("model.vocab_size"), ": ", config.vocab_size,
             " is smaller than the text's ", tokenizer.vocab_size(), " characters");
  return std::make_unique<CharGptTask>(text_path, config, corpus);
}

}  // namespace

std::unique_ptr<StudyTask> make_study_task(const nlohmann::json& json) {
  JsonReader reader(json, "task");
  std::string type;
  reader.require("type", type);
  if (type == "fashion_mnist") return make_fashion_mnist(reader);
  if (type == "gaussian_blobs") return make_gaussian_blobs(reader);
  if (type == "char_gpt") return make_char_gpt(reader);
  std::string hint = closest_match(type, {"fashion_mnist", "gaussian_blobs", "char_gpt"});
  KILN_FAIL("task.type: unknown task '", type, "' (expected fashion_mnist, gaussian_blobs or char_gpt",
            hint.empty() ? std::string() : "; did you mean " + hint + "?", ")");
}

}  // namespace kiln::train
