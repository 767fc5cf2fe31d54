"""Are features multilingual? For each concept, one sentence per language that uses the concept's word (written for
the project: PARALLEL). A concept's features are the `per_concept` features most active on its English word; a
feature is multilingual when it also fires on the concept's word in every other language. The baseline: features
drawn at random with the same firing frequency (on held-out corpus text), tested on the same words: the share a
frequent-but-unrelated feature reaches by chance.
"""
from __future__ import annotations

import torch

from ..io import GlassworkError

LANGUAGES = ("en", "fr", "es", "de")
PARALLEL: dict[str, dict[str, tuple[str, str]]] = {  # concept -> language -> (sentence, the concept's word in it)
    "water": {"en": ("I drink a glass of water every morning.", "water"),
              "fr": ("Je bois un verre d'eau chaque matin.", "eau"),
              "es": ("Bebo un vaso de agua cada mañana.", "agua"),
              "de": ("Ich trinke jeden Morgen ein Glas Wasser.", "Wasser")},
    "dog": {"en": ("The dog is sleeping in the garden.", "dog"), "fr": ("Le chien dort dans le jardin.", "chien"),
            "es": ("El perro duerme en el jardín.", "perro"), "de": ("Der Hund schläft im Garten.", "Hund")},
    "cat": {"en": ("My cat likes to sit by the window.", "cat"), "fr": ("Mon chat aime s'asseoir près de la fenêtre.", "chat"),
            "es": ("A mi gato le gusta sentarse junto a la ventana.", "gato"),
            "de": ("Meine Katze sitzt gern am Fenster.", "Katze")},
    "house": {"en": ("They bought a small house near the river.", "house"),
              "fr": ("Ils ont acheté une petite maison près de la rivière.", "maison"),
              "es": ("Compraron una casa pequeña cerca del río.", "casa"),
              "de": ("Sie kauften ein kleines Haus am Fluss.", "Haus")},
    "book": {"en": ("She is reading a book about history.", "book"),
             "fr": ("Elle lit un livre sur l'histoire.", "livre"),
             "es": ("Ella lee un libro sobre historia.", "libro"),
             "de": ("Sie liest ein Buch über Geschichte.", "Buch")},
    "sun": {"en": ("The sun rises early in summer.", "sun"), "fr": ("Le soleil se lève tôt en été.", "soleil"),
            "es": ("El sol sale temprano en verano.", "sol"), "de": ("Die Sonne geht im Sommer früh auf.", "Sonne")},
    "moon": {"en": ("The moon was bright last night.", "moon"), "fr": ("La lune était brillante hier soir.", "lune"),
             "es": ("La luna brillaba anoche.", "luna"), "de": ("Der Mond war gestern Nacht hell.", "Mond")},
    "king": {"en": ("The king lived in a large castle.", "king"), "fr": ("Le roi vivait dans un grand château.", "roi"),
             "es": ("El rey vivía en un gran castillo.", "rey"), "de": ("Der König lebte in einer großen Burg.", "König")},
    "city": {"en": ("Paris is a beautiful city.", "city"), "fr": ("Paris est une belle ville.", "ville"),
             "es": ("París es una ciudad hermosa.", "ciudad"), "de": ("Paris ist eine schöne Stadt.", "Stadt")},
    "bread": {"en": ("He bought fresh bread at the bakery.", "bread"),
              "fr": ("Il a acheté du pain frais à la boulangerie.", "pain"),
              "es": ("Compró pan fresco en la panadería.", "pan"),
              "de": ("Er kaufte frisches Brot in der Bäckerei.", "Brot")},
    "school": {"en": ("The children walk to school together.", "school"),
               "fr": ("Les enfants vont à l'école ensemble.", "école"),
               "es": ("Los niños caminan juntos a la escuela.", "escuela"),
               "de": ("Die Kinder gehen zusammen zur Schule.", "Schule")},
    "car": {"en": ("Her car is parked outside.", "car"), "fr": ("Sa voiture est garée dehors.", "voiture"),
            "es": ("Su coche está aparcado fuera.", "coche"), "de": ("Ihr Auto steht draußen.", "Auto")},
    "tree": {"en": ("An old tree grows behind the church.", "tree"),
             "fr": ("Un vieil arbre pousse derrière l'église.", "arbre"),
             "es": ("Un árbol viejo crece detrás de la iglesia.", "árbol"),
             "de": ("Ein alter Baum wächst hinter der Kirche.", "Baum")},
    "music": {"en": ("We listened to music all evening.", "music"),
              "fr": ("Nous avons écouté de la musique toute la soirée.", "musique"),
              "es": ("Escuchamos música toda la noche.", "música"),
              "de": ("Wir hörten den ganzen Abend Musik.", "Musik")},
    "war": {"en": ("The war lasted for six years.", "war"), "fr": ("La guerre a duré six ans.", "guerre"),
            "es": ("La guerra duró seis años.", "guerra"), "de": ("Der Krieg dauerte sechs Jahre.", "Krieg")},
    "money": {"en": ("He saved money for a new bike.", "money"),
              "fr": ("Il a économisé de l'argent pour un nouveau vélo.", "argent"),
              "es": ("Ahorró dinero para una bicicleta nueva.", "dinero"),
              "de": ("Er sparte Geld für ein neues Fahrrad.", "Geld")},
    "night": {"en": ("It was cold during the night.", "night"), "fr": ("Il faisait froid pendant la nuit.", "nuit"),
              "es": ("Hacía frío durante la noche.", "noche"), "de": ("In der Nacht war es kalt.", "Nacht")},
    "friend": {"en": ("My friend called me yesterday.", "friend"), "fr": ("Mon ami m'a appelé hier.", "ami"),
               "es": ("Mi amigo me llamó ayer.", "amigo"), "de": ("Mein Freund hat mich gestern angerufen.", "Freund")},
    "sea": {"en": ("We swam in the sea all afternoon.", "sea"), "fr": ("Nous avons nagé dans la mer tout l'après-midi.", "mer"),
            "es": ("Nadamos en el mar toda la tarde.", "mar"), "de": ("Wir schwammen den ganzen Nachmittag im Meer.", "Meer")},
    "mother": {"en": ("Her mother works at the hospital.", "mother"),
               "fr": ("Sa mère travaille à l'hôpital.", "mère"),
               "es": ("Su madre trabaja en el hospital.", "madre"),
               "de": ("Ihre Mutter arbeitet im Krankenhaus.", "Mutter")},
}


def word_positions(model, sentence: str, word: str) -> list[int]:
    """Token positions (BOS = 0) of `word`'s first occurrence in `sentence`: the tokens between the prefix before it
    and the prefix through it."""
    at = sentence.find(word)
    if at < 0:
        raise GlassworkError(f"'{word}' does not occur in '{sentence}'")
    before = model.tokenize(sentence[:at].rstrip()).shape[1] if sentence[:at].strip() else 1
    through = model.tokenize(sentence[:at + len(word)]).shape[1]
    return list(range(before, max(through, before + 1)))


@torch.no_grad()
def concept_activations(model, dictionary, parallel: dict | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """{concept: {language: [F] max code over the concept word's tokens}} at the dictionary's hook_in."""
    from ..hooks import capture
    parallel = parallel or PARALLEL
    if not parallel:
        raise GlassworkError("no concepts given (expected {concept: {language: (sentence, word)}})")
    hook = dictionary.cfg.hook_in
    out: dict = {}
    for concept, by_lang in parallel.items():
        if not by_lang:
            raise GlassworkError(f"concept '{concept}' has no sentences")
        out[concept] = {}
        for lang, (sentence, word) in by_lang.items():
            ids = model.tokenize(sentence)
            pos = word_positions(model, sentence, word)
            _, cache = capture(model, ids, [hook])
            codes = dictionary.encode(cache[hook][0, pos].to(dictionary.W_dec.dtype)).float()  # [n_pos, F]
            out[concept][lang] = codes.max(0).values
    return out


def multilingual_share(acts: dict, frequency: torch.Tensor, per_concept: int = 3, n_random: int = 20,
                       source: str = "en", seed: int = 0) -> dict:
    """The share of concept features (the `per_concept` most active on the `source` word) that fire on the concept's
    word in every other language, and the same share for `n_random` random features of matched firing frequency
    (`frequency` [F], from held-out text) per concept feature. Returns {share, baseline, n, per_concept: {...}}."""
    g = torch.Generator().manual_seed(seed)
    order = frequency.argsort()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    hits, base, n, rows = 0, 0.0, 0, {}
    for concept, by_lang in acts.items():
        others = [l for l in by_lang if l != source]
        if source not in by_lang or not others:
            raise GlassworkError(f"concept '{concept}': needs the '{source}' sentence and at least one other language")
        fires_all = torch.stack([by_lang[l] > 0 for l in others]).all(0)  # [F]
        top = by_lang[source].topk(per_concept).indices.tolist()
        top = [f for f in top if by_lang[source][f] > 0]
        found = [f for f in top if bool(fires_all[f])]
        chance = []
        for f in top:  # features whose frequency rank is near f's: the same firing frequency, unrelated
            lo = max(0, int(rank[f]) - 50)
            pool = order[lo:lo + 101]
            pool = pool[pool != f]
            pick = pool[torch.randint(len(pool), (n_random,), generator=g)]
            chance.append(float(fires_all[pick].float().mean()))
        rows[concept] = {"features": top, "multilingual": found, "baseline": sum(chance) / len(chance) if chance else 0.0}
        hits += len(found)
        base += sum(chance)
        n += len(top)
    return {"share": hits / n if n else 0.0, "baseline": base / n if n else 0.0, "n": n, "per_concept": rows}
